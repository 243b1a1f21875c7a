"""Evaluating control policies and their baselines on held-out prompts (notebook 04, and 05's analyses).

:mod:`steerlab.rl` trains; this module measures, with the same greedy rollout loop (:func:`steerlab.rl.generate`):

* :func:`answers` (greedy completions, steered by a policy when given), :func:`final_answer`,
  :func:`accuracy_and_answers`, :func:`agreement` (share of prompts where two methods commit to the same answer);
* the fixed-feature baseline: :func:`frequent_features` (candidates) and :func:`search_fixed_feature`;
* :func:`chosen_features` (which feature the greedy policy picks at every generated token and layer);
* :func:`compare_methods`: frozen model, best fixed feature, CRL and RLVR on the same prompts.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from steerlab import control
from steerlab.control.rl import generate, tokens_for
from steerlab.world import Example, score


def answers(model, examples: Sequence[Example], policy: control.ControlPolicy | None = None, saes=None,
            fwd_hooks=()) -> list[str]:
    """Greedy completions of ``examples`` (a greedy policy steering every token when ``policy`` is given)."""
    hooks = list(fwd_hooks) + (control.policy_hooks(policy, saes, greedy=True) if policy is not None else [])
    return generate(model, [e.prompt for e in examples], tokens_for(examples), hooks).completions


def final_answer(example: Example, completion: str) -> str:
    """The answer a completion commits to: the number after ``so`` (reasoning) or the first word."""
    words = completion.split()
    if example.task == "reasoning":
        return words[words.index("so") + 1] if "so" in words and words.index("so") + 1 < len(words) else ""
    return words[0] if words else ""


def accuracy_and_answers(examples: Sequence[Example], completions: Sequence[str],
                         reward_fn: Callable[[Example, str], float] = score) -> tuple[float, list[str]]:
    """Share correct (mean ``reward_fn``, by default ``world.score``) and the final answers."""
    acc = sum(float(reward_fn(e, c)) for e, c in zip(examples, completions)) / max(len(examples), 1)
    return acc, [final_answer(e, c) for e, c in zip(examples, completions)]


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of prompts where two methods commit to the same final answer."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def search_fixed_feature(model, sae, layer: int, examples: Sequence[Example], coef: float,
                         features: Sequence[int] | None = None, reward_fn: Callable[[Example, str], float] = score
                         ) -> tuple[int, dict[int, float]]:
    """Best fixed single-feature steering: the feature whose constant addition (``coef * W_dec[f]`` at every
    generated token) maximises the mean ``reward_fn`` on ``examples``. Returns ``(best feature, {feature: mean})``."""
    features = range(sae.W_dec.shape[0]) if features is None else features
    accs = {}
    for f in tqdm(features, desc=f"fixed-feature search (layer {layer})", leave=False):
        comp = answers(model, examples, fwd_hooks=control.feature_hooks(sae, layer, int(f), coef))
        accs[int(f)] = accuracy_and_answers(examples, comp, reward_fn)[0]
    return max(accs, key=accs.get), accs


def frequent_features(model, sae, layer: int, examples: Sequence[Example], n: int) -> list[int]:
    """The ``n`` features most often active at the last prompt token of ``examples`` (search candidates)."""
    acts = []
    hook = control.hook_name(layer)
    with torch.no_grad():
        for e in examples:
            _, cache = model.run_with_cache(e.prompt, names_filter=hook)
            acts.append(sae.encode(cache[hook][0, -1:]) > 0)
    counts = torch.cat(acts).sum(0)
    return counts.topk(min(n, counts.numel())).indices.tolist()


def chosen_features(model, policy: control.ControlPolicy, saes, prompts: Sequence[str], max_new_tokens: int = 1
                    ) -> list[list[dict]]:
    """Per prompt, the greedy policy's choice at every generated token: ``[{"step", "token", "layer",
    "features"}]`` in step then layer order (``token`` is the word generated at that step; feature ``d_sae``
    is the no-op). For analyses of what the controller does (branch points, circuits)."""
    trace = control.Trace()
    g = generate(model, prompts, max_new_tokens, control.policy_hooks(policy, saes, greedy=True, trace=trace))
    n_layers = len(policy.cfg.layers)
    out: list[list[dict]] = [[] for _ in prompts]
    for c, (rows, step, alive) in enumerate(g.calls):
        for entry in trace.steps[c * n_layers: (c + 1) * n_layers]:
            for j, i in enumerate(rows):
                if alive[j]:
                    words = g.completions[i].split()
                    out[i].append({"step": step, "token": words[step] if step < len(words) else "<eos>",
                                   "layer": entry["layer"], "features": entry["action"].actions[j].tolist()})
    return out


def method_completions(model, examples: Sequence[Example], saes, policy: control.ControlPolicy,
                       fixed: tuple[int, int], coef: float, tuned=None) -> dict[str, list[str]]:
    """Greedy completions of: the frozen model (``base``), the best fixed single feature ``fixed = (layer,
    feature)`` (``fixed``), CRL (``crl``) and, when given, the RLVR-tuned LM (``rlvr``)."""
    saes = control._as_dict(saes, policy.cfg.layers) if not isinstance(saes, dict) else saes
    runs = {"base": answers(model, examples),
            "fixed": answers(model, examples, fwd_hooks=control.feature_hooks(saes[fixed[0]], *fixed, coef)),
            "crl": answers(model, examples, policy, saes)}
    if tuned is not None:
        runs["rlvr"] = answers(tuned, examples)
    return runs


def compare_methods(model, examples: Sequence[Example], saes, policy: control.ControlPolicy, fixed: tuple[int, int],
                    coef: float, tuned=None, reward_fn: Callable[[Example, str], float] = score
                    ) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Held-out mean reward (``reward_fn``; by default accuracy by ``world.score``) and final answers of each
    method of :func:`method_completions`."""
    accs, finals = {}, {}
    for name, comp in method_completions(model, examples, saes, policy, fixed, coef, tuned).items():
        accs[name], finals[name] = accuracy_and_answers(examples, comp, reward_fn)
    return accs, finals
