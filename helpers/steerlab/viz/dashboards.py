"""Feature dashboards: circuitsvis token views rendered offline, histograms, logit effects, a widget browser.

circuitsvis inlines its ~1.3 MB script into every view it renders offline. Here the script is emitted ONCE:

* a static page: :func:`page` writes ``<script>`` (the circuitsvis bundle) once, then every view;
* a notebook: display :func:`notebook_setup` once (one output holding the script), then any number of views
  made by :func:`token_activations_html` (each a ``<div>`` plus a tiny render call that waits for the script).

Every view closes its ``<div id=...></div>`` (circuitsvis writes ``<div .../>``, which HTML does not
self-close, so several views on one page would nest and wipe each other).

Public API other stages use: ``token_activations_html(tokens, values) -> str``, ``page(views, title) -> str``,
``notebook_setup() -> HTML``, ``show(view_html) -> HTML``.
"""

from __future__ import annotations

import html as _html
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Sequence

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
    """Tokens coloured by ``values`` (circuitsvis ``ColoredTokens``), as an HTML fragment without the bundle."""
    tokens, values = list(tokens), [float(v) for v in values]
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values: give one value per token")
    view = component_html("ColoredTokens", tokens=tokens, values=values, minValue=0.0,
                          maxValue=max_value if max_value is not None else max(max(values, default=0.0), 1e-6))
    return (f"<div><b>{_html.escape(label)}</b></div>\n" if label else "") + view


def page(views: Sequence[str], title: str = "steerlab") -> str:
    """A standalone HTML document: the circuitsvis bundle once, then every view (works offline)."""
    body = "\n".join(views)
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_html.escape(title)}</title>\n"
            f"<script>{circuitsvis_script()}</script></head>\n<body>\n<h2>{_html.escape(title)}</h2>\n{body}\n"
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


def top_contexts(acts: Float[Tensor, "batch pos d_sae"], rows: Int[Tensor, "batch pos"], tokenizer,
                 feature: int, k: int = 8) -> list[tuple[list[str], list[float]]]:
    """The ``k`` rows where ``feature`` peaks highest, as (tokens, values) up to the last real token; tokens as
    :func:`token_strings` decodes them."""
    peak = acts[..., feature].max(dim=1).values
    out = []
    for r in peak.topk(min(k, len(peak))).indices.tolist():
        if peak[r] <= 0:
            break
        n = int((rows[r] != tokenizer.pad_token_id).sum())
        out.append((token_strings(tokenizer, rows[r, :n].tolist()), acts[r, :n, feature].tolist()))
    return out


def logit_effects(model, sae, feature: int, k: int = 10) -> pd.DataFrame:
    """Tokens the feature's decoder row promotes and suppresses directly: ``W_dec[f] @ W_U`` (columns
    promoted, promoted_logit, suppressed, suppressed_logit; the final LayerNorm's scale is ignored)."""
    effect = (sae.W_dec[feature].detach() @ model.W_U.detach()).float()
    top, bottom = effect.topk(k), (-effect).topk(k)
    def ids(idx):  # a lone token decoded, its leading space shown as such
        return [repr(model.tokenizer.decode([i], clean_up_tokenization_spaces=False)) for i in idx]

    return pd.DataFrame({"promoted": ids(top.indices.tolist()), "promoted_logit": top.values.tolist(),
                         "suppressed": ids(bottom.indices.tolist()), "suppressed_logit": (-bottom.values).tolist()})


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


def dashboard_html(acts, rows, model, sae, feature: int, k: int = 6, label: str | None = None) -> str:
    """Top-activating contexts and logit effects of one feature as HTML (no bundle: see module docstring)."""
    ctx = top_contexts(acts, rows, model.tokenizer, feature, k)
    vmax = max((max(v) for _, v in ctx), default=1.0)
    head = f"<h4>feature {feature}{' — ' + _html.escape(label) if label else ''}</h4>"
    views = [token_activations_html(t, v, vmax) for t, v in ctx] or ["<i>never fires on these rows</i>"]
    table = logit_effects(model, sae, feature, k=8).to_html(index=False, float_format="%.2f")
    return head + "\n".join(views) + table


def feature_browser(acts, rows, model, sae, features: Sequence[int], labels: dict | None = None):
    """An ipywidgets browser: a dropdown over ``features`` that redraws the dashboard and histogram."""
    import ipywidgets as widgets
    from IPython.display import HTML, display

    labels = labels or {}
    pick = widgets.Dropdown(options=[(f"{f} {labels.get(f, '')}".strip(), int(f)) for f in features],
                            description="feature")
    out = widgets.Output()

    def draw(change=None):
        out.clear_output(wait=True)
        with out:
            f = pick.value
            display(HTML(dashboard_html(acts, rows, model, sae, f, label=labels.get(f))))
            fig = activation_histogram(acts, f)
            display(fig)
            plt.close(fig)

    pick.observe(draw, names="value")
    draw()
    return widgets.VBox([pick, out])


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
