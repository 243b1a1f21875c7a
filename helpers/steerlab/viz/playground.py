"""An ipywidgets steering playground: prompt, method, features (by explanation words), strength.

The steered and unsteered generations are shown side by side, with the chosen features' activations per
token (read with the SAE encoder, before steering) rendered by circuitsvis. Building the widget runs one
update, so a papermill run shows a static first view and never waits for input.
"""

from __future__ import annotations

import html
from typing import Callable, Mapping, Sequence

import torch

from steerlab.steer import decoding, registry
from steerlab.steer.features import read_features

# A steering method for the playground: (features, strength) -> fwd_hooks
Builder = Callable[[Sequence[int], float], list]


def feature_methods(hook_name: str, sae, extra: Mapping[str, Builder] | None = None) -> dict[str, Builder]:
    """``none`` and every feature method of the registry (``steerlab.steer.registry.names("features")``) at
    ``hook_name``, plus ``extra`` (e.g. SPARE toward context/memory)."""
    def builder(name: str) -> Builder:
        return lambda f, s: (registry.build(name, None, {hook_name: sae}, hook_name=hook_name, features=list(f))
                             .hooks(s) if f else [])

    methods: dict[str, Builder] = {"none": lambda f, s: []}
    methods |= {name: builder(name) for name in registry.names("features")}
    return {**methods, **(extra or {})}


def registry_builder(method: registry.SteeringMethod, sign: float = 1.0) -> Builder:
    """A playground builder from a built registry method (its own features): strength ``s`` -> ``hooks(sign * s)``."""
    return lambda f, s: method.hooks(sign * s)


@torch.no_grad()
def token_activations(model, sae, hook_name: str, text: str, features: Sequence[int]):
    """(tokens, values ``[pos, n_feat]``) of ``features`` on ``text`` (unsteered residual at ``hook_name``)."""
    toks = model.to_tokens(text)
    _, cache = model.run_with_cache(toks, names_filter=hook_name)
    return model.to_str_tokens(toks[0]), read_features(sae, cache[hook_name][0], features)


class _Prompt:
    """A bare prompt for :func:`steerlab.steer.decoding.greedy` (duck-typed like an Example)."""

    def __init__(self, prompt: str, max_new_tokens: int) -> None:
        self.prompt, self.max_new_tokens = prompt, max_new_tokens


def token_view(tokens: Sequence[str], values, labels: Sequence[str]) -> str:
    """circuitsvis colored-tokens view (HTML) of per-token feature values ``[pos, n_feat]``."""
    try:
        from steerlab.viz import dashboards as viz

        if hasattr(viz, "token_activations_html"):
            return viz.token_activations_html(list(tokens), values, list(labels))
    except ImportError:
        pass
    from circuitsvis.tokens import colored_tokens_multi

    return str(colored_tokens_multi(list(tokens), values.float(), list(labels)))


def playground(model, sae, hook_name: str, prompts: Sequence[str], methods: Mapping[str, Builder],
               feature_labels: Mapping[int, str], max_new_tokens: int = 8, strength: float = 2.0):
    """The widget (a ``VBox``); ``feature_labels`` maps feature id -> its explanation words."""
    import ipywidgets as w

    prompt = w.Dropdown(options=list(prompts), description="prompt", layout=w.Layout(width="95%"))
    method = w.Dropdown(options=list(methods), value=list(methods)[1 if len(methods) > 1 else 0],
                        description="method")
    feats = w.SelectMultiple(options=[(f"{c}: {lab}", c) for c, lab in feature_labels.items()],
                             value=tuple(list(feature_labels)[:1]), description="features", rows=6,
                             layout=w.Layout(width="95%"))
    slider = w.FloatSlider(value=strength, min=-10.0, max=10.0, step=0.5, description="strength")
    out = w.HTML()

    def update(_=None):
        f = list(feats.value)
        fwd = methods[method.value](f, slider.value)
        ask = [_Prompt(prompt.value, max_new_tokens)]
        base = decoding.greedy(model, ask)[0]
        steered = decoding.greedy(model, ask, fwd)[0]
        view = ""
        if f:
            joined = prompt.value + (steered if steered[:1].isspace() else " " + steered)
            toks, vals = token_activations(model, sae, hook_name, joined, f)
            view = token_view(toks, vals, [f"{c}: {feature_labels.get(c, '')}" for c in f])
        out.value = ("<table style='width:100%'><tr><th>unsteered</th><th>steered</th></tr>"
                     f"<tr><td><code>{html.escape(base)}</code></td><td><code>{html.escape(steered)}</code></td>"
                     f"</tr></table>{view}")

    for widget in (prompt, method, feats, slider):
        widget.observe(update, names="value")
    update()
    return w.VBox([prompt, w.HBox([method, slider]), feats, out])
