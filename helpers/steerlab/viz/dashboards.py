"""Feature dashboards: token views, activation histograms, logit effects and a paging browser, all offline.

A dashboard (:func:`dashboard_html`) is plain HTML with inline styles and an inline SVG histogram: no script, no
CDN, so it works in a static page, in a notebook output and in an ipywidgets ``HTML`` widget alike. Tokens are
shown as the tokenizer decodes them in context (:func:`token_strings`: ``" the"``, spaces kept), each in a thin
box so a leading space is visible, newlines as ``↵``, and always HTML-escaped (``<eos>`` shows as text).

circuitsvis views (:func:`token_activations_html`) are still offered for other stages. circuitsvis inlines its
~1.3 MB script into every view it renders offline; here the script is emitted ONCE:

* a static page: :func:`page` writes ``<script>`` (the circuitsvis bundle) once, then every view (only where a view
  needs it);
* a notebook: display :func:`notebook_setup` once (one output holding the script), then any number of views
  made by :func:`token_activations_html` (each a ``<div>`` plus a tiny render call that waits for the script).

Every circuitsvis view closes its ``<div id=...></div>`` (circuitsvis writes ``<div .../>``, which HTML does not
self-close, so several views on one page would nest and wipe each other), and its tokens are escaped first
(circuitsvis sets each token as inner HTML).

Public API other stages use: ``tokens_html(tokens, values) -> str``, ``dashboard_html(...) -> str``,
``feature_browser(...)``, ``feature_contexts(model, saes, rows, keys)``, ``token_activations_html(tokens, values)
-> str``, ``page(views, title) -> str``, ``notebook_setup() -> HTML``, ``show(view_html) -> HTML``.
"""

from __future__ import annotations

import html as _html
import math
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.core.activations import encode_pre_topk
from steerlab.sae.codes import stop_layer


@lru_cache(maxsize=1)
def circuitsvis_script() -> str:
    """The circuitsvis browser bundle (defines the global ``CircuitsVis``), safe to inline in ``<script>``."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def _props(**kwargs) -> str:
    from circuitsvis.utils.convert_props import convert_props

    return convert_props(kwargs)


def component_html(component: str, **props) -> str:
    """One circuitsvis view WITHOUT the bundle: a closed ``<div>`` and a render call that waits for it."""
    uid = "cv-" + uuid.uuid4().hex[:12]
    return (f'<div id="{uid}" style="margin: 6px 0;"></div>\n'
            f"<script>(function r(){{if(window.CircuitsVis){{CircuitsVis.render(\"{uid}\", "
            f"CircuitsVis.{component}, {_props(**props)});}}else{{setTimeout(r, 50);}}}})();</script>")


def token_activations_html(tokens: Sequence[str], values: Sequence[float], max_value: float | None = None,
                           label: str | None = None) -> str:
    """Tokens coloured by ``values`` (circuitsvis ``ColoredTokens``), as an HTML fragment without the bundle. The
    tokens are HTML-escaped first: circuitsvis writes each one as inner HTML (``<eos>`` would vanish as a tag)."""
    tokens, values = [_html.escape(str(t), quote=False) for t in tokens], [float(v) for v in values]
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values: give one value per token")
    view = component_html("ColoredTokens", tokens=tokens, values=values, minValue=0.0,
                          maxValue=max_value if max_value is not None else max(max(values, default=0.0), 1e-6))
    return (f"<div><b>{_html.escape(label)}</b></div>\n" if label else "") + view


def page(views: Sequence[str], title: str = "steerlab") -> str:
    """A standalone HTML document: the circuitsvis bundle once where a view needs it, then every view (works
    offline; plain dashboards need no script)."""
    body = "\n".join(views)
    script = f"<script>{circuitsvis_script()}</script>" if "CircuitsVis.render(" in body else ""
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>\n"
            f"{script}</head>\n<body style='font-family:sans-serif'>\n<h2>{_html.escape(title)}</h2>\n{body}\n"
            "</body></html>")


def notebook_setup():
    """Display once per notebook: loads the circuitsvis bundle for every later view."""
    from IPython.display import HTML

    return HTML(f"<script>{circuitsvis_script()}</script><i>circuitsvis loaded</i>")


def show(view: str):
    from IPython.display import HTML

    return HTML(view)


# ------------------------------------------------------------------------------------- feature data
@torch.no_grad()
def feature_acts(model, sae, rows: Int[Tensor, "batch pos"], batch_size: int = 256,
                 pre_topk: bool = False) -> Float[Tensor, "batch pos d_sae"]:
    """SAE codes at every position of ``rows`` (position 0, ``<bos>`` and ``<pad>`` positions set to 0)."""
    hook = sae.cfg.metadata.hook_name
    out = []
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=stop_layer(hook))
        z = encode_pre_topk(sae, cache[hook]) if pre_topk else sae.encode(cache[hook])
        special = (tokens == model.tokenizer.bos_token_id) | (tokens == model.tokenizer.pad_token_id)
        special[:, 0] = True
        out.append(z.masked_fill(special[..., None], 0.0))
    return torch.cat(out)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token of ``ids`` as the tokenizer decodes it in context, spaces kept (``" the"``, not ``"▁the"``
    or ``"the"``): token ``i`` is ``decode(ids[:i+1])`` minus ``decode(ids[:i])``, which is right for
    subword schemes whose single-token decode drops a leading space. Special tokens keep their names."""
    out, prev = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), clean_up_tokenization_spaces=False)
        out.append(text[len(prev):] if text.startswith(prev) else tokenizer.decode([ids[i]]))
        prev = text
    return out


def _contexts(values: Float[Tensor, "batch pos"], rows: Int[Tensor, "batch pos"], tokenizer, k: int,
              decoded: dict[int, list[str]] | None = None) -> list[tuple[list[str], list[float]]]:
    """The ``k`` rows where ``values`` peak highest (positive peaks only), as (tokens, values) up to the last real
    token; ``decoded`` caches each row's :func:`token_strings`."""
    decoded = {} if decoded is None else decoded
    peak = values.max(dim=1).values
    out = []
    for r in peak.topk(min(k, len(peak))).indices.tolist():
        if peak[r] <= 0:
            break
        n = int((rows[r] != tokenizer.pad_token_id).sum())
        if r not in decoded:
            decoded[r] = token_strings(tokenizer, rows[r, :n].tolist())
        out.append((decoded[r], values[r, :n].tolist()))
    return out


def top_contexts(acts: Float[Tensor, "batch pos d_sae"], rows: Int[Tensor, "batch pos"], tokenizer,
                 feature: int, k: int = 8) -> list[tuple[list[str], list[float]]]:
    """The ``k`` rows where ``feature`` peaks highest, as (tokens, values) up to the last real token; tokens as
    :func:`token_strings` decodes them."""
    return _contexts(acts[..., feature], rows, tokenizer, k)


@torch.no_grad()
def feature_contexts(model, saes: Mapping[int, object], rows: Int[Tensor, "batch pos"],
                     keys: Sequence[tuple[int, int]], k: int = 5, batch_size: int = 32
                     ) -> dict[tuple[int, int], list[tuple[list[str], list[float]]]]:
    """``{(layer, feature): top contexts}`` over ``rows`` for the features ``keys`` (e.g.
    ``steerlab.viz.graph_view.view_features``), as :func:`top_contexts` gives them, one model pass per batch for
    all layers. Only the asked-for features' codes are kept (``[batch, pos, n_keys]``), so a wide SAE costs no
    more memory than a narrow one; ``<bos>``, ``<pad>`` and position 0 count as 0."""
    by_layer: dict[int, list[int]] = {}
    for l, f in dict.fromkeys((int(l), int(f)) for l, f in keys):
        by_layer.setdefault(l, []).append(f)
    if not by_layer:
        return {}
    hooks = {l: saes[l].cfg.metadata.hook_name for l in by_layer}
    parts: dict[int, list[Tensor]] = {l: [] for l in by_layer}
    tok = model.tokenizer
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        _, cache = model.run_with_cache(tokens, names_filter=list(hooks.values()),
                                        stop_at_layer=max(stop_layer(h) for h in hooks.values()))
        special = (tokens == tok.bos_token_id) | (tokens == tok.pad_token_id)
        special[:, 0] = True
        for l, fs in by_layer.items():
            z = saes[l].encode(cache[hooks[l]])[..., fs].float()
            parts[l].append(z.masked_fill(special[..., None], 0.0))
    decoded: dict[int, list[str]] = {}
    out = {}
    for l, fs in by_layer.items():
        z = torch.cat(parts[l])
        out.update({(l, f): _contexts(z[..., j], rows, tok, k, decoded) for j, f in enumerate(fs)})
    return out


class LogitEffects(NamedTuple):
    """A feature's direct effect on the logits, ``W_dec[f] @ W_U``: ``promoted`` the ``k`` tokens it raises most
    (token as decoded alone, spaces kept; effect), largest first; ``suppressed`` the ``k`` it lowers most, lowest
    first."""

    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


def feature_logit_effects(model, sae, feature: int, k: int = 10) -> LogitEffects:
    """:class:`LogitEffects` of ``feature`` (the final LayerNorm's scale is ignored)."""
    effect = (sae.W_dec[feature].detach() @ model.W_U.detach()).float()
    top, bottom = effect.topk(k), (-effect).topk(k)

    def toks(idx, vals):
        return [(model.tokenizer.decode([i], clean_up_tokenization_spaces=False), float(v)) for i, v in zip(idx, vals)]

    return LogitEffects(toks(top.indices.tolist(), top.values.tolist()),
                        toks(bottom.indices.tolist(), (-bottom.values).tolist()))


def logit_effects(model, sae, feature: int, k: int = 10) -> pd.DataFrame:
    """Tokens the feature's decoder row promotes and suppresses directly: ``W_dec[f] @ W_U`` (columns
    promoted, promoted_logit, suppressed, suppressed_logit; tokens as ``repr`` of their decoded text, so a
    leading space shows; the final LayerNorm's scale is ignored)."""
    eff = feature_logit_effects(model, sae, feature, k)
    return pd.DataFrame({"promoted": [repr(t) for t, _ in eff.promoted], "promoted_logit": [v for _, v in eff.promoted],
                         "suppressed": [repr(t) for t, _ in eff.suppressed],
                         "suppressed_logit": [v for _, v in eff.suppressed]})


def activation_histogram(acts: Float[Tensor, "batch pos d_sae"], feature: int, ax=None):
    """Histogram of the feature's non-zero activations (log count), with its firing rate in the title."""
    a = acts[..., feature].flatten()
    nz = a[a > 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 2.6))
    ax.hist(nz.numpy(), bins=30, color="tab:orange", log=True)
    ax.set_title(f"feature {feature}: fires on {len(nz)} / {len(a)} positions", fontsize=9)
    ax.set_xlabel("activation")
    return ax.figure


# ------------------------------------------------------------------------------------- plain-HTML views
_BOX = "display:inline-block;white-space:pre;border:1px solid;margin:0 1px 1px 0;padding:0 1px;line-height:1.3;"


def visible_token(token: str) -> str:
    """A token as shown: newlines and tabs as visible marks; spaces stay (the token's box shows them)."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192")


def tokens_html(tokens: Sequence[str], values: Sequence[float], max_value: float | None = None,
                peak: int | None = None, window: tuple[int, int] = (12, 4)) -> str:
    """Tokens as text, each in a thin box shaded orange by its value (0 to ``max_value``, default the largest),
    spaces kept, every token HTML-escaped; hovering one shows its ``repr`` and value. ``peak``: outline that token
    and show only ``window`` = (before, after) tokens around it."""
    tokens, values = [str(t) for t in tokens], [float(v) for v in values]
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values: give one value per token")
    vmax = max_value if max_value is not None else max(max(values, default=0.0), 1e-6)
    lo, hi = (0, len(tokens)) if peak is None else (max(0, peak - window[0]), min(len(tokens), peak + window[1] + 1))
    spans = [f"<span title='{_html.escape(repr(t))}: {v:.3g}' style='{_BOX}border-color:"
             f"{'#c05621' if i == peak else '#e2e8f0'};background:rgba(237,137,54,"
             f"{min(max(v, 0.0) / vmax, 1.0) if vmax > 0 else 0.0:.3f})'>{_html.escape(visible_token(t))}</span>"
             for i, (t, v) in enumerate(zip(tokens[lo:hi], values[lo:hi]), lo)]
    return (f"<div style='margin:2px 0'>{'&hellip;' if lo > 0 else ''}{''.join(spans)}"
            f"{'&hellip;' if hi < len(tokens) else ''}</div>")


def histogram_svg(values: Tensor, bins: int = 24, width: int = 280, height: int = 110) -> str:
    """Inline-SVG histogram of the non-zero entries of ``values`` (bar height: log of the count), captioned with
    how often it fires; each bar's ``<title>`` gives its range and count."""
    v = values.detach().flatten().float()
    nz = v[v > 0]
    caption = f"fires on {len(nz)} / {len(v)} positions ({len(nz) / max(len(v), 1):.2%})"
    if not len(nz):
        return f"<div style='font-size:12px'>{caption}</div>"
    hi = float(nz.max())
    counts = torch.histc(nz, bins=bins, min=0.0, max=hi).tolist()
    x0, y0, w, h = 30, 6, width - 38, height - 26
    top, bw = math.log1p(max(counts)), w / bins
    bars = [f"<rect x='{x0 + i * bw:.1f}' y='{y0 + h * (1 - math.log1p(c) / top):.1f}' width='{bw - 1:.1f}' "
            f"height='{h * math.log1p(c) / top:.1f}' fill='#ed8936'><title>{i * hi / bins:.3g} to "
            f"{(i + 1) * hi / bins:.3g}: {int(c)}</title></rect>" for i, c in enumerate(counts) if c > 0]
    axis = (f"<line x1='{x0}' y1='{y0 + h}' x2='{x0 + w}' y2='{y0 + h}' stroke='#555'/>"
            f"<text x='{x0}' y='{y0 + h + 12}' font-size='10'>0</text>"
            f"<text x='{x0 + w}' y='{y0 + h + 12}' font-size='10' text-anchor='end'>{hi:.3g}</text>"
            f"<text x='{x0 + w / 2}' y='{y0 + h + 12}' font-size='10' text-anchor='middle'>activation</text>"
            f"<text x='{x0 - 3}' y='{y0 + 8}' font-size='10' text-anchor='end'>{int(max(counts))}</text>"
            f"<text x='{x0 - 3}' y='{y0 + h}' font-size='10' text-anchor='end'>1</text>")
    return (f"<svg class='histogram' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
            f"width='{width}' height='{height}'>{''.join(bars)}{axis}</svg>"
            f"<div style='font-size:12px'>{caption} (log count)</div>")


def _chips(title: str, pairs: Sequence[tuple[str, float]], colour: str) -> str:
    chips = "".join(f"<span style='white-space:nowrap;margin-right:6px'><span title='{_html.escape(repr(t))}' "
                    f"style='{_BOX}border-color:#e2e8f0;background:{colour}'>{_html.escape(visible_token(t))}</span>"
                    f"<small>{v:+.2f}</small></span> " for t, v in pairs)
    return f"<div style='margin:4px 0'><b>{title}</b><br>{chips}</div>"


def _words(words) -> str:
    return words if isinstance(words, str) else " ".join(str(w) for w in words)


def dashboard_html(acts, rows, model, sae, feature: int, k: int = 6, label: str | None = None,
                   explanations: Mapping[str, str | Sequence[str]] | None = None, n_logits: int = 8) -> str:
    """One feature's dashboard as plain HTML (no script): its label and explanation words (``explanations``:
    method name -> words, e.g. notebook 02's MI words), its top ``k`` contexts (each around its peak), its
    activation histogram, and the ``n_logits`` tokens its decoder row promotes and suppresses most."""
    ctx = top_contexts(acts, rows, model.tokenizer, feature, k)
    vmax = max((max(v) for _, v in ctx), default=1.0)
    head = f"<h4 style='margin:6px 0'>feature {int(feature)}{' &mdash; ' + _html.escape(label) if label else ''}</h4>"
    expl = "".join(f"<div><b>{_html.escape(str(name))}</b>: {_html.escape(_words(w))}</div>"
                   for name, w in (explanations or {}).items())
    views = [tokens_html(t, v, vmax, peak=max(range(len(v)), key=v.__getitem__)) for t, v in ctx]
    left = "<b>top contexts</b>" + ("".join(views) or "<div><i>never fires on these rows</i></div>")
    eff = feature_logit_effects(model, sae, feature, n_logits)
    right = (histogram_svg(acts[..., feature]) + _chips("promoted tokens", eff.promoted, "#c6f6d5")
             + _chips("suppressed tokens", eff.suppressed, "#fed7d7"))
    return (f"<div class='steerlab-dashboard' data-feature='{int(feature)}' style='font-family:sans-serif;"
            f"font-size:13px;border-top:1px solid #ccc;padding:4px 0'>{head}{expl}<div style='display:flex;"
            f"flex-wrap:wrap;gap:18px'><div style='flex:3;min-width:320px'>{left}</div><div style='flex:2;"
            f"min-width:260px'>{right}</div></div></div>")


def feature_browser(acts, rows, model, sae, features: Sequence[int], labels: Mapping[int, str] | None = None,
                    explanations: Mapping[str, Mapping[int, str | Sequence[str]]] | None = None, k: int = 6):
    """An ipywidgets pager over ``features``: previous / next buttons and a dropdown to jump, one
    :func:`dashboard_html` at a time, each built when first shown (``explanations``: method name -> feature ->
    words). Returns ``VBox([HBox([previous, dropdown, next, position]), HTML])``."""
    import ipywidgets as widgets

    features, labels = [int(f) for f in features], labels or {}
    if not features:
        raise ValueError("feature_browser needs at least one feature")
    built: dict[int, str] = {}
    pick = widgets.Dropdown(options=[(f"{f} {labels.get(f, '')}".strip(), i) for i, f in enumerate(features)],
                            value=0, description="feature")
    prev, nxt = widgets.Button(description="\u25c0 previous"), widgets.Button(description="next \u25b6")
    where, out = widgets.Label(), widgets.HTML()

    def draw(change=None) -> None:
        i = pick.value
        f = features[i]
        if f not in built:
            words = {m: by_f[f] for m, by_f in (explanations or {}).items() if f in by_f}
            built[f] = dashboard_html(acts, rows, model, sae, f, k=k, label=labels.get(f), explanations=words)
        out.value = built[f]
        where.value = f"{i + 1} / {len(features)}"
        prev.disabled, nxt.disabled = i == 0, i == len(features) - 1

    prev.on_click(lambda _: setattr(pick, "value", max(pick.value - 1, 0)))
    nxt.on_click(lambda _: setattr(pick, "value", min(pick.value + 1, len(features) - 1)))
    pick.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([prev, pick, nxt, where]), out])


def training_curves(curves: dict):
    """FVU (log scale) and L0 against training step, one line per layer; ``curves[layer] = {step, fvu, l0}``.
    Where a layer has ``kl_finetune`` (``{step, kl}``, from ``steerlab.sae_finetune``), a third panel shows
    the downstream KL during the decoder fine-tuning."""
    tuned = {layer: c["kl_finetune"] for layer, c in curves.items() if c.get("kl_finetune")}
    fig, axes = plt.subplots(1, 3 if tuned else 2, figsize=(13 if tuned else 9, 3))
    a1, a2 = axes[0], axes[1]
    for layer, c in sorted(curves.items(), key=lambda kv: int(kv[0])):
        a1.plot(c["step"], c["fvu"], label=f"layer {layer}")
        a2.plot(c["step"], c["l0"], label=f"layer {layer}")
    a1.set_yscale("log")
    a1.set(xlabel="training step", ylabel="fraction of variance unexplained", title="reconstruction")
    a2.set(xlabel="training step", ylabel="active latents per token", title="L0")
    for layer, c in sorted(tuned.items(), key=lambda kv: int(kv[0])):
        axes[2].plot(c["step"], c["kl"], label=f"layer {layer}")
    if tuned:
        axes[2].set_yscale("log")
        axes[2].set(xlabel="fine-tuning step", ylabel="KL(clean || spliced), nats", title="decoder KL fine-tuning")
    a1.legend(fontsize=8)
    fig.tight_layout()
    return fig
