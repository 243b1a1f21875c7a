"""An ipywidgets steering playground: a preset, a prompt, a method, features (by explanation words), a strength.

The unsteered and steered generations are shown side by side in an ``ipywidgets.Output``, with the chosen
features' activations per token (read with the SAE encoder on the unsteered residual of prompt + steered text)
as circuitsvis views, one per feature. The circuitsvis bundle is loaded once per widget, into its own output
(:func:`steerlab.viz.dashboards.notebook_setup`); every later view is a small ``<div>`` that waits for it. An
exception in an update (a builder that raises, a bad strength) is shown inside the widget in red, replacing the
previous result, and never escapes into the notebook's log.

A :class:`Preset` is a starting point: a method, features, a strength and the prompts where that setting changes
the generation. :func:`preset` measures this on candidate prompts (those it changes come first), so a notebook
offers settings taken from its own measurements and says how often they change the output. Building the widget
runs one update, so its first view is ready when it is displayed and a papermill run never waits for input.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import ipywidgets as w
import torch

from steerlab.core import run
from steerlab.steer import decoding, registry
from steerlab.steer.features import read_features
from steerlab.viz import dashboards

log = logging.getLogger(__name__)

# A steering method for the playground: (features, strength) -> fwd_hooks
Builder = Callable[[Sequence[int], float], list]


# ---------------------------------------------------------------------------------------------- methods
def registry_feature_builder(name: str, hook_name: str, sae, positions: str = "all", read: str = "encoder") -> Builder:
    """The registry's feature method ``name`` at ``hook_name`` as a builder; it steers nothing while no feature is
    selected (an empty S is an error for every feature edit). ``read`` is passed to methods that have one."""
    if name not in registry.names("features"):
        raise KeyError(f"no feature method {name!r} in the registry; feature methods: {registry.names('features')}")
    fields = registry.REGISTRY[name].config.__dataclass_fields__
    kw = {"positions": positions} | ({"read": read} if "read" in fields else {})
    return lambda f, s: (registry.build(name, None, {hook_name: sae}, hook_name=hook_name, features=list(f), **kw)
                         .hooks(s) if len(f) else [])


def feature_methods(hook_name: str, sae, extra: Mapping[str, Builder] | None = None, positions: str = "all",
                    read: str = "encoder") -> dict[str, Builder]:
    """``none`` and every feature method of the registry (``steerlab.steer.registry.names("features")``) at
    ``hook_name`` and ``positions``, plus ``extra`` (e.g. SPARE toward context/memory, a chosen defence)."""
    methods: dict[str, Builder] = {"none": lambda f, s: []}
    methods |= {name: registry_feature_builder(name, hook_name, sae, positions, read)
                for name in registry.names("features")}
    return {**methods, **(extra or {})}


def registry_builder(method: registry.SteeringMethod, sign: float = 1.0) -> Builder:
    """A playground builder from a built registry method (its own features): strength ``s`` -> ``hooks(sign * s)``."""
    return lambda f, s: method.hooks(sign * s)


class _Prompt:
    """A bare prompt for :func:`steerlab.steer.decoding.greedy` (duck-typed like an Example)."""

    def __init__(self, prompt: str, max_new_tokens: int) -> None:
        self.prompt, self.max_new_tokens = prompt, max_new_tokens


def generate(model, prompts: Sequence[str], fwd_hooks=(), max_new_tokens: int = 8) -> list[str]:
    """Greedy continuations of ``prompts`` under ``fwd_hooks`` (every generated token steered)."""
    return decoding.greedy(model, [_Prompt(p, max_new_tokens) for p in prompts], fwd_hooks)


# ---------------------------------------------------------------------------------------------- presets
@dataclass
class Preset:
    """A starting point of the playground, offered in its ``preset`` dropdown."""

    name: str  # what the dropdown shows
    method: str  # a key of the playground's methods
    features: list[int]  # feature ids selected (ignored by methods with their own features, such as SPARE)
    strength: float  # the strength slider's value
    prompts: list[str]  # prompts offered; those whose generation the setting changes come first
    changed: int = 0  # how many of the candidate prompts the setting changes (measured by :func:`preset`)
    candidates: int = 0  # how many candidate prompts were measured
    note: str = ""  # what to look for

    @property
    def label(self) -> str:
        """The dropdown text: the name and how many candidates the setting changed."""
        return f"{self.name} (changes {self.changed}/{self.candidates} prompts)" if self.candidates else self.name


def preset(name: str, model, methods: Mapping[str, Builder], method: str, features: Sequence[int],
           strengths: float | Sequence[float], candidates: Sequence[str], n: int = 6, max_new_tokens: int = 8,
           note: str = "") -> Preset:
    """A :class:`Preset` measured on ``candidates``: the strength is the one of ``strengths`` that changes the
    greedy generation of the most candidates (the smallest ``|s|`` among ties), and the ``n`` prompts offered are
    the candidates it changes, then the others."""
    if method not in methods:
        raise KeyError(f"preset {name!r}: no method {method!r} in the playground's methods ({list(methods)})")
    strengths = [float(strengths)] if isinstance(strengths, (int, float)) else [float(s) for s in strengths]
    if not strengths or not candidates:
        raise ValueError(f"preset {name!r} needs at least one strength and one candidate prompt")
    base = generate(model, candidates, (), max_new_tokens)
    best = None
    for s in sorted(strengths, key=abs):
        steered = generate(model, candidates, methods[method](list(features), s), max_new_tokens)
        diff = [b != x for b, x in zip(base, steered)]
        if best is None or sum(diff) > sum(best[1]):
            best = (s, diff)
    s, diff = best
    order = [p for p, d in zip(candidates, diff) if d] + [p for p, d in zip(candidates, diff) if not d]
    return Preset(name, method, [int(c) for c in features], s, order[:n], sum(diff), len(candidates), note)


def topic_prompts(examples: Sequence, n_words: int = 6) -> dict[str, list[str]]:
    """Topic texts (``meta['topic']``) cut to their first ``n_words`` words, so the model writes the rest; by topic."""
    out: dict[str, list[str]] = {}
    for e in examples:
        out.setdefault(e.meta["topic"], []).append(" ".join(e.prompt.split()[:n_words]))
    return out


def topic_presets(model, methods: Mapping[str, Builder], method: str, topic_features: Mapping[str, Sequence[int]],
                  texts: Sequence, strengths: Sequence[float], n_candidates: int = 24, n: int = 6,
                  n_topics: int = 2, max_new_tokens: int = 8) -> list[Preset]:
    """``amplify topic <t>`` presets: ``method`` on topic ``t``'s own features (``topic_features[t]``, e.g. those
    its explanations label ``topic:<t>``) over texts of that topic cut short (:func:`topic_prompts` of ``texts``),
    for the first ``n_topics`` topics that have both features and texts; each measured by :func:`preset`."""
    prompts = topic_prompts(texts)
    usable = [t for t, f in topic_features.items() if len(f) and prompts.get(t)][:n_topics]
    return [preset(f"{method} topic {t}", model, methods, method, topic_features[t], strengths,
                   prompts[t][:n_candidates], n, max_new_tokens,
                   f"{method} the features labelled topic:{t}: the continuation fills with {t} words") for t in usable]


def presets_table(presets: Sequence[Preset]):
    """One row per preset: name, method, features, strength, and how many candidate prompts it changes."""
    import pandas as pd

    return pd.DataFrame([{"preset": p.name, "method": p.method, "features": p.features, "strength": p.strength,
                          "changed": p.changed, "candidates": p.candidates, "first prompt": p.prompts[0][-70:]}
                         for p in presets])


# ---------------------------------------------------------------------------------------------- views
@torch.no_grad()
def token_activations(model, sae, hook_name: str, text: str, features: Sequence[int]):
    """(tokens, values ``[pos, n_feat]``) of ``features`` on ``text`` (unsteered residual at ``hook_name``); tokens
    as :func:`steerlab.viz.dashboards.token_strings` decodes them, the leading ``<bos>`` left out."""
    toks = run.to_tokens(model, text)
    _, cache = model.run_with_cache(toks, names_filter=hook_name)
    values = read_features(sae, cache[hook_name][0], features)
    ids = toks[0].tolist()
    start = 1 if ids and ids[0] == model.tokenizer.bos_token_id else 0
    return dashboards.token_strings(model.tokenizer, ids)[start:], values[start:]


def token_views(tokens: Sequence[str], values, labels: Sequence[str]) -> str:
    """One circuitsvis coloured-tokens view per feature (HTML, no bundle) of ``values`` ``[pos, n_feat]``, all on
    one colour scale (the largest value shown), so the features can be compared."""
    values = torch.as_tensor(values).float().reshape(len(tokens), len(labels))
    top = max(float(values.max()) if values.numel() else 0.0, 1e-6)
    return "\n".join(dashboards.token_activations_html(list(tokens), values[:, j].tolist(), top, label)
                     for j, label in enumerate(labels))


def _html_output(text: str) -> dict:
    return {"output_type": "display_data", "data": {"text/html": text, "text/plain": "steerlab playground"},
            "metadata": {}}


def error_html(err: BaseException) -> str:
    """A red message naming the exception (shown inside the widget instead of its result)."""
    return (f"<div class='steerlab-error' style='color:#b00020;font-weight:bold'>error: "
            f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</div>")


# ---------------------------------------------------------------------------------------------- widget
class Playground(w.VBox):
    """The playground widget (a ``VBox``). Its controls are ``preset``, ``prompt``, ``method``, ``features`` (any
    number) and ``strength``; ``script`` is the ``Output`` holding the circuitsvis bundle, ``out`` the result's
    ``Output``. After each update ``unsteered``, ``steered`` and ``error`` hold what it shows (``error``: the
    exception shown in red, else ``None``)."""

    def __init__(self, model, sae, hook_name: str, prompts: Sequence[str], methods: Mapping[str, Builder],
                 feature_labels: Mapping[int, str], max_new_tokens: int = 8, strength: float = 2.0,
                 presets: Sequence[Preset] = (), max_strength: float | None = None) -> None:
        self.model, self.sae, self.hook_name, self.methods = model, sae, hook_name, dict(methods)
        self.feature_labels, self.max_new_tokens, self.presets = dict(feature_labels), max_new_tokens, list(presets)
        self.unsteered = self.steered = ""
        self.error: BaseException | None = None
        self._base: dict[str, str] = {}  # prompt -> unsteered generation
        self._quiet = False  # set while a preset moves several controls: one update at the end
        all_prompts = list(dict.fromkeys([p for ps in self.presets for p in ps.prompts] + list(prompts)))
        feats = list(dict.fromkeys([c for ps in self.presets for c in ps.features] + list(self.feature_labels)))
        top = max([10.0, abs(strength)] + [abs(p.strength) for p in self.presets])
        limit = max_strength or 5.0 * math.ceil(top / 5.0)  # the slider covers every preset's strength

        self.preset = w.Dropdown(options=[("(free)", -1)] + [(p.label, i) for i, p in enumerate(self.presets)],
                                 value=0 if self.presets else -1, description="preset", layout=w.Layout(width="95%"))
        self.prompt = w.Dropdown(options=all_prompts, description="prompt", layout=w.Layout(width="95%"))
        names = list(self.methods)
        self.method = w.Dropdown(options=names, value=names[1 if len(names) > 1 else 0], description="method")
        self.features = w.SelectMultiple(options=[(f"{c}: {self.feature_labels.get(c, '')}"[:110], c) for c in feats],
                                         value=tuple(feats[:1]), description="features", rows=8,
                                         layout=w.Layout(width="95%"))
        self.strength = w.FloatSlider(value=strength, min=-limit, max=limit, step=0.5, description="strength",
                                      continuous_update=False, layout=w.Layout(width="60%"))
        self.note = w.HTML()
        self.script = w.Output()  # the circuitsvis bundle, once
        self.script.append_display_data(dashboards.notebook_setup())
        self.out = w.Output()
        super().__init__([self.preset, self.note, self.prompt, w.HBox([self.method, self.strength]), self.features,
                          self.script, self.out])
        self.add_class("steerlab-playground")
        self.preset.observe(self._apply_preset, names="value")
        for control in (self.prompt, self.method, self.features, self.strength):
            control.observe(self.update, names="value")
        self._apply_preset()

    def _apply_preset(self, _=None) -> None:
        if self.preset.value >= 0:
            p = self.presets[self.preset.value]
            self._quiet = True
            try:
                self.method.value, self.strength.value = p.method, p.strength
                self.features.value = tuple(p.features)
                if p.prompts:
                    self.prompt.value = p.prompts[0]
            except Exception as err:  # noqa: BLE001 - a preset the controls cannot take is shown, not raised
                return self._show_error(err)
            finally:
                self._quiet = False
            self.note.value = html.escape(p.note)
        self.update()

    def update(self, _=None) -> None:
        """Regenerate (unsteered, cached per prompt; steered) and redraw; an exception is shown in red instead."""
        if self._quiet:
            return
        try:
            self.out.outputs = (_html_output(self._render()),)
            self.error = None
        except Exception as err:  # noqa: BLE001 - any failure of a user's setting is shown, not raised
            self._show_error(err)

    def _show_error(self, err: Exception) -> None:
        log.info("playground update failed", exc_info=True)
        self.error, self.unsteered, self.steered = err, "", ""
        self.out.outputs = (_html_output(error_html(err)),)

    def _render(self) -> str:
        prompt, f, s = self.prompt.value, [int(c) for c in self.features.value], float(self.strength.value)
        if prompt is None:
            raise ValueError("no prompt: give the playground at least one prompt")
        fwd = self.methods[self.method.value](f, s)
        if prompt not in self._base:
            self._base[prompt] = generate(self.model, [prompt], (), self.max_new_tokens)[0]
        self.unsteered = self._base[prompt]
        self.steered = generate(self.model, [prompt], fwd, self.max_new_tokens)[0]
        same = "same as unsteered" if self.steered == self.unsteered else "<b>changed</b>"
        cell = "style='text-align:left;width:50%'"
        table = (f"<table class='steerlab-result' style='width:100%'><tr><th {cell}>unsteered</th>"
                 f"<th {cell}>steered ({html.escape(self.method.value)}, strength {s:g}): {same}</th></tr>"
                 f"<tr><td {cell}><code class='unsteered'>{html.escape(self.unsteered)}</code></td>"
                 f"<td {cell}><code class='steered'>{html.escape(self.steered)}</code></td></tr></table>")
        if not f:
            return table + "<i>select features to see their activation on every token</i>"
        joined = prompt + (self.steered if self.steered[:1].isspace() else " " + self.steered)
        toks, vals = token_activations(self.model, self.sae, self.hook_name, joined.rstrip(), f)
        labels = [f"feature {c}: {self.feature_labels.get(c, '')}" for c in f]
        return table + "<div><i>activation on prompt + steered text (unsteered residual)</i></div>" + \
            token_views(toks, vals, labels)


def playground(model, sae, hook_name: str, prompts: Sequence[str], methods: Mapping[str, Builder],
               feature_labels: Mapping[int, str], max_new_tokens: int = 8, strength: float = 2.0,
               presets: Sequence[Preset] = (), max_strength: float | None = None) -> Playground:
    """The widget; ``feature_labels`` maps feature id -> its explanation words, ``presets`` are offered first (the
    first one is applied), ``max_strength`` bounds the slider (default: covers every preset's strength)."""
    return Playground(model, sae, hook_name, prompts, methods, feature_labels, max_new_tokens, strength, presets,
                      max_strength)
