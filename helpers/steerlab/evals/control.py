"""Evaluating control policies and their baselines on held-out prompts (notebook 04, and 05's analyses).

:mod:`steerlab.rl` trains; this module measures, with the same greedy rollout loop (:func:`steerlab.rl.generate`):

* :func:`answers` (greedy completions, steered by a policy when given), :func:`final_answer`,
  :func:`accuracy_and_answers`, :func:`agreement` (share of prompts where two methods commit to the same answer);
* the fixed-feature baseline: :func:`frequent_features` (candidates) and :func:`search_fixed_feature`;
* :func:`chosen_features` (which feature the greedy policy picks at every generated token and layer);
* the CRL paper's analyses of a trained policy: :func:`episode_trace` (per token and layer: the choice, its
  probability and the critic's value along greedy episodes), :func:`critic_trajectories` (the value by step, for
  episodes that end right and wrong), :func:`branch_points` (tokens where the feature choice decides correctness);
* :func:`train_or_load`: a control policy trained here or loaded from a shipped folder (refused unless its action
  space, SAEs and model match), with its training history;
* :func:`compare_methods`: frozen model, best fixed feature, CRL (and its variants, e.g. with a no-op action) and
  RLVR on the same prompts;
* :func:`control_settings`: the settings a task suite offers (tinyworld: multiple choice with one and two layers
  and the addition chains; a real model's suite: knowledge-source control on its conflicts and arithmetic);
* :func:`summary`: notebook 04's metrics dict.

Rewards are each example's own ``score`` (decoded text, SQuAD-normalised for a real model's suite), never token ids.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from steerlab import control
from steerlab.control.rl import RLConfig, generate, rollout, tokens_for, train_control
from steerlab.core.text import answer_span

Example = Any  # steerlab.tasks.base.Example (duck-typed: prompt, answer, task, meta, max_new_tokens, score)


def score(example: Example, completion: str) -> bool:
    """The default reward: the example's own ``score`` of the decoded completion."""
    return bool(example.score(completion))


def answers(model, examples: Sequence[Example], policy: control.ControlPolicy | None = None, saes=None,
            fwd_hooks=()) -> list[str]:
    """Greedy completions of ``examples`` (a greedy policy steering every token when ``policy`` is given)."""
    hooks = list(fwd_hooks) + (control.policy_hooks(policy, saes, greedy=True) if policy is not None else [])
    return generate(model, [e.prompt for e in examples], tokens_for(examples), hooks).completions


def final_answer(example: Example, completion: str) -> str:
    """The answer a completion commits to: for reasoning the number after ``so`` (tinyworld's chains, whose gold
    ends ``so <result>``; "" without it) or else the first number of the answer span; for other tasks the first
    word of the answer span (``core.text.answer_span``), as written. Used to compare methods' answers (agreement), not to score them."""
    words = completion.split()
    if example.task == "reasoning":
        if "so" in example.answer.split():  # tinyworld's chains end "... so <result>"
            return words[words.index("so") + 1] if "so" in words and words.index("so") + 1 < len(words) else ""
        num = re.search(r"-?\d+", answer_span(completion))
        return num.group(0) if num else ""
    span = answer_span(completion).split()
    return span[0].strip(".,;:!?") if span else ""


def accuracy_and_answers(examples: Sequence[Example], completions: Sequence[str],
                         reward_fn: Callable[[Example, str], float] = score) -> tuple[float, list[str]]:
    """Share correct (mean ``reward_fn``, by default ``world.score``) and the final answers."""
    acc = sum(float(reward_fn(e, c)) for e, c in zip(examples, completions)) / max(len(examples), 1)
    return acc, [final_answer(e, c) for e, c in zip(examples, completions)]


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of prompts where two methods commit to the same final answer."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def search_fixed_feature(model, sae, layer: int, examples: Sequence[Example], coef: float,
                         features: Sequence[int] | None = None, reward_fn: Callable[[Example, str], float] = score,
                         max_floats: int = 2 ** 28) -> tuple[int, dict[int, float]]:
    """Best fixed single-feature steering: the feature whose constant addition (``coef * W_dec[f]`` at the last
    position of every call, as :func:`steerlab.control.feature_hooks` adds it) maximises the mean ``reward_fn`` on
    ``examples``. Returns ``(best feature, {feature: mean})`` (ties: the earlier candidate).

    Candidates are searched together (:func:`fixed_feature_completions`), so the search costs a few batched
    generations rather than one per candidate; greedy answers equal one-candidate runs (tested)."""
    completions = fixed_feature_completions(model, sae, layer, examples, coef, features, max_floats)
    accs = {f: accuracy_and_answers(examples, c, reward_fn)[0] for f, c in completions.items()}
    return max(accs, key=accs.get), accs


def oracle_accuracy(model, sae, layer: int, examples: Sequence[Example], coef: float,
                    features: Sequence[int] | None = None, reward_fn: Callable[[Example, str], float] = score,
                    max_floats: int = 2 ** 28) -> float:
    """The headroom of a feature policy: the share of ``examples`` that at least one candidate feature, added as
    :func:`search_fixed_feature` adds it (one feature for the whole episode), answers correctly. An oracle that
    knows the gold answer picks that feature per prompt; a policy that picks per token could do better still, so
    this is the headroom of one feature per prompt, and the best fixed feature is its one-feature-for-all floor."""
    completions = fixed_feature_completions(model, sae, layer, examples, coef, features, max_floats)
    ok = np.array([[reward_fn(e, c) > 0 for e, c in zip(examples, comp)] for comp in completions.values()])
    return float(ok.any(axis=0).mean()) if ok.size else float("nan")


def fixed_feature_completions(model, sae, layer: int, examples: Sequence[Example], coef: float,
                              features: Sequence[int] | None = None, max_floats: int = 2 ** 28
                              ) -> dict[int, list[str]]:
    """Greedy completions of ``examples`` with each candidate feature added (``coef * W_dec[f]`` at the last
    position of every call), ``{feature: completions}``.

    A generation batch holds each prompt once per candidate of a chunk, that row steered by its own candidate.
    Chunks are sized so that a batch's activations stay near ``max_floats`` floats (thousands of rows on
    tinyworld, tens on Gemma). Prompts of one batch share a length (or are left-padded on a rotary model), so
    every row's last position is its own prompt's."""
    from steerlab.core import run
    from steerlab.core.hooks import check_features, check_strength

    d_sae = sae.W_dec.shape[0]
    features = list(range(d_sae)) if features is None else check_features(list(features), d_sae, "features")
    coef = check_strength(coef, "coef")
    W = sae.W_dec.detach()
    n_new = tokens_for(examples)
    completions: dict[int, list[str]] = {f: [""] * len(examples) for f in features}
    for rows, tokens in run.batches(model, [e.prompt for e in examples], len(examples), n_new):
        per_row = (tokens.shape[1] + n_new) * model.cfg.n_layers * model.cfg.d_model * 4
        per_call = max(1, int(max_floats // per_row) // len(rows))
        for s in tqdm(range(0, len(features), per_call), desc=f"fixed-feature search (layer {layer})", leave=False):
            chunk = features[s: s + per_call]
            # row-major (each prompt once per candidate, prompts in batch order): generate keeps this order
            direction = coef * W[torch.tensor([f for _ in rows for f in chunk])].to(model.cfg.device)

            def fn(resid, hook, direction=direction):
                resid = resid.clone()
                resid[:, -1] = resid[:, -1] + direction.to(resid.dtype)
                return resid

            prompts = [examples[i].prompt for i in rows for _ in chunk]
            gen = generate(model, prompts, n_new, [(control.hook_name(layer), fn)], batch_size=len(prompts))
            if gen.calls and gen.calls[0][0] != list(range(len(prompts))):
                raise RuntimeError("fixed-feature search: generate reordered the rows of a batch")
            for k, i in enumerate(rows):
                for j, f in enumerate(chunk):
                    completions[f][i] = gen.completions[k * len(chunk) + j]
    return completions


def frequent_features(model, sae, layer: int, examples: Sequence[Example], n: int) -> list[int]:
    """The ``n`` features most often active at the last prompt token of ``examples`` (search candidates)."""
    acts = []
    hook = control.hook_name(layer)
    with torch.no_grad():
        for e in examples:
            _, cache = model.run_with_cache(e.prompt, names_filter=hook, stop_at_layer=layer + 1)
            acts.append(sae.encode(cache[hook][0, -1:]) > 0)
    counts = torch.cat(acts).sum(0)
    return counts.topk(min(n, counts.numel())).indices.tolist()


def chosen_features(model, policy: control.ControlPolicy, saes, prompts: Sequence[str], max_new_tokens: int = 1
                    ) -> list[list[dict]]:
    """Per prompt, the greedy policy's choice at every generated token: ``[{"step", "token", "layer",
    "features"}]`` in step then layer order (``token`` is the word generated at that step; feature ``d_sae``
    is the no-op of a ``noop`` policy). For analyses of what the controller does (branch points, circuits)."""
    trace = control.Trace()
    g = generate(model, prompts, max_new_tokens, control.policy_hooks(policy, saes, greedy=True, trace=trace))
    n_layers = len(policy.cfg.layers)
    out: list[list[dict]] = [[] for _ in prompts]
    for c, (rows, step, alive) in enumerate(g.calls):
        for entry in trace.steps[c * n_layers: (c + 1) * n_layers]:
            for j, i in enumerate(rows):
                if alive[j]:
                    toks = g.tokens[i]
                    out[i].append({"step": step, "token": model.tokenizer.decode([toks[step]]) if step < len(toks)
                                   else "<eos>",
                                   "layer": entry["layer"], "features": entry["action"].actions[j].tolist()})
    return out


def episode_trace(model, policy: control.ControlPolicy, saes, examples: Sequence[Example],
                  reward_fn: Callable[[Example, str], float] = score) -> pd.DataFrame:
    """The greedy policy's episodes on ``examples``, one row per (episode, generated token, controlled layer):
    ``example`` (index into ``examples``), ``step``, ``layer``, ``token`` (the word generated at that step),
    ``feature`` (the first chosen feature; ``d_sae`` is the no-op), ``p_feature`` (its probability under the
    policy), ``n_candidates`` (features the adaptive mask allowed), ``value`` (the critic's estimate of the state)
    and ``correct`` (the episode's reward > 0)."""
    return _trace_table(model, policy, rollout(model, policy, saes, examples, greedy=True, reward_fn=reward_fn))


def _trace_table(model, policy, r) -> pd.DataFrame:
    with torch.no_grad():
        p = torch.zeros(len(r.layer))
        for layer in policy.cfg.layers:
            at = r.layer == layer
            if bool(at.any()):
                probs = policy.logits(layer, r.x[at], r.cand[at]).softmax(-1)
                p[at] = probs.gather(-1, r.actions[at][:, :1]).squeeze(-1)
    rows = []
    for i in range(len(r.layer)):
        ep, step = int(r.episode[i]), int(r.step[i])
        toks = r.tokens[ep]
        rows.append({"example": ep, "step": step, "layer": int(r.layer[i]),
                     "token": model.tokenizer.decode([toks[step]]) if step < len(toks) else "<eos>",
                     "feature": int(r.actions[i, 0]), "p_feature": float(p[i]),
                     "n_candidates": int(r.cand[i, : policy.cfg.d_sae].sum()), "value": float(r.value[i]),
                     "correct": bool(r.rewards[ep] > 0)})
    return pd.DataFrame(rows, columns=["example", "step", "layer", "token", "feature", "p_feature", "n_candidates",
                                       "value", "correct"])


def critic_trajectories(trace: pd.DataFrame) -> pd.DataFrame:
    """The critic's mean value at each generation step (first controlled layer), for the greedy episodes that end
    right and those that end wrong (:func:`episode_trace`): columns ``step``, ``value_correct``, ``value_wrong``,
    ``n_correct``, ``n_wrong``, ``gap`` (right minus wrong) and ``value_auroc`` (the AUROC of the value at that step
    as a predictor of the episode's correctness; NaN when one side is empty). A critic that has learned the task
    separates the two early: the gap opens at the step where the outcome is decided."""
    from steerlab.evals.concepts import auroc_per_feature

    t = trace[trace.layer == trace.layer.min()] if len(trace) else trace
    rows = []
    for step, g in t.groupby("step"):
        right, wrong = g[g.correct], g[~g.correct]
        au = (float(auroc_per_feature(torch.tensor(g.value.to_numpy())[:, None], g.correct.tolist())[0])
              if len(right) and len(wrong) else float("nan"))
        rows.append({"step": int(step), "value_correct": right.value.mean() if len(right) else float("nan"),
                     "value_wrong": wrong.value.mean() if len(wrong) else float("nan"),
                     "n_correct": len(right), "n_wrong": len(wrong), "value_auroc": au})
    out = pd.DataFrame(rows, columns=["step", "value_correct", "value_wrong", "n_correct", "n_wrong", "value_auroc"])
    out.insert(5, "gap", out.value_correct - out.value_wrong)
    return out


def branch_points(model, policy: control.ControlPolicy, saes, examples: Sequence[Example],
                  reward_fn: Callable[[Example, str], float] = score, n_alternatives: int = 3) -> pd.DataFrame:
    """Branch points of the greedy controller (the CRL paper's analysis): tokens where the feature choice decides
    correctness.

    Every (episode, step, layer) of :func:`episode_trace` is replayed as one batch of copies of its prompt: copy 0
    keeps the policy's choice (the reference, in the same batch so that batching cannot move it), the others
    replace that one choice by the policy's ``n_alternatives`` next-ranked candidates and by no steering (feature
    ``d_sae``, unless that is the choice); the policy stays greedy at every other token and layer. Returns the
    trace's rows with ``correct_replay`` (the reference's reward > 0), ``n_tried``, ``n_flips`` (replacements whose
    correctness differs from the reference's), ``flip_share`` (``n_flips / n_tried``) and ``branch``
    (``n_flips > 0``). Needs ``policy.cfg.k == 1`` (one feature per token, the paper's interpretable setting)."""
    if policy.cfg.k != 1:
        raise ValueError(f"branch_points swaps one feature per token: the policy adds k={policy.cfg.k} (use k=1)")
    if n_alternatives < 1:
        raise ValueError(f"n_alternatives must be >= 1 (got {n_alternatives})")
    r = rollout(model, policy, saes, examples, greedy=True, reward_fn=reward_fn)
    d_sae, out = policy.cfg.d_sae, []
    for i in range(len(r.layer)):
        ep, step, layer, chosen = int(r.episode[i]), int(r.step[i]), int(r.layer[i]), int(r.actions[i, 0])
        with torch.no_grad():
            logits = policy.logits(layer, r.x[i: i + 1], r.cand[i: i + 1])[0]
        ranked = [int(f) for f in logits.argsort(descending=True) if torch.isfinite(logits[f]) and int(f) != chosen]
        choice = torch.tensor([chosen] + [f for f in ranked if f < d_sae][:n_alternatives]
                              + ([d_sae] if chosen != d_sae else []))

        def swap(l, call, actions, layer=layer, step=step, choice=choice):
            return choice[:, None] if (l, call) == (layer, step) else None

        g = generate(model, [examples[ep].prompt] * len(choice), tokens_for([examples[ep]]),
                     control.policy_hooks(policy, saes, greedy=True, override=swap))
        if list(g.calls[0][0]) != list(range(len(choice))):  # copy j must be batch row j for swap's row order
            raise RuntimeError("branch_points: generate reordered the copies of one prompt")
        right = [bool(reward_fn(examples[ep], c) > 0) for c in g.completions]
        flips = sum(x != right[0] for x in right[1:])
        out.append({"correct_replay": right[0], "n_tried": len(choice) - 1, "n_flips": flips,
                    "flip_share": flips / max(len(choice) - 1, 1), "branch": flips > 0})
    return pd.concat([_trace_table(model, policy, r), pd.DataFrame(out, index=range(len(out)))], axis=1)


def branch_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per generation step: ``tokens`` (steered tokens at that step), ``branch_share`` (share that are branch
    points) and ``mean_flip_share``; the paper finds few branch points, where the answer is decided."""
    if not len(points):
        return pd.DataFrame(columns=["tokens", "branch_share", "mean_flip_share"])
    return points.groupby("step").agg(tokens=("branch", "size"), branch_share=("branch", "mean"),
                                      mean_flip_share=("flip_share", "mean"))


def method_completions(model, examples: Sequence[Example], saes, policy: control.ControlPolicy,
                       fixed: tuple[int, int], coef: float, tuned=None,
                       variants: Mapping[str, control.ControlPolicy] | None = None) -> dict[str, list[str]]:
    """Greedy completions of: the frozen model (``base``), the best fixed single feature ``fixed = (layer,
    feature)`` (``fixed_feature``), CRL (``crl``), each policy of ``variants`` under its name (notebook 04:
    ``{"crl_noop": p}``, the variant with a no-op action) and, when given, the RLVR-tuned LM (``rlvr``)."""
    saes = control.policy._as_dict(saes, policy.cfg.layers)
    runs = {"base": answers(model, examples)}
    if fixed is not None:
        runs["fixed_feature"] = answers(model, examples, fwd_hooks=control.feature_hooks(saes[fixed[0]], *fixed, coef))
    runs["crl"] = answers(model, examples, policy, saes)
    for name, other in (variants or {}).items():
        runs[name] = answers(model, examples, other, saes)
    if tuned is not None:
        runs["rlvr"] = answers(tuned, examples)
    return runs


def compare_methods(model, examples: Sequence[Example], saes, policy: control.ControlPolicy, fixed: tuple[int, int],
                    coef: float, tuned=None, reward_fn: Callable[[Example, str], float] = score,
                    variants: Mapping[str, control.ControlPolicy] | None = None
                    ) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Held-out mean reward (``reward_fn``; by default accuracy by ``world.score``) and final answers of each
    method of :func:`method_completions`."""
    accs, finals = {}, {}
    for name, comp in method_completions(model, examples, saes, policy, fixed, coef, tuned, variants).items():
        accs[name], finals[name] = accuracy_and_answers(examples, comp, reward_fn)
    return accs, finals


def train_or_load(model, saes: dict, cfg: control.ControlConfig, sampler: Callable[[random.Random], Example],
                  rl_cfg: RLConfig, out: str | Path, shipped: str | Path | None = None, seed: int = 0,
                  callbacks: Sequence[Callable] = (), reward_fn: Callable[[Example, str], float] = score,
                  meta: Mapping[str, Any] | None = None) -> tuple[control.ControlPolicy, dict]:
    """A control policy of config ``cfg`` for ``saes`` (dict layer -> SAE) and its training history
    (``{"reward": [...], "entropy": [...], ...}``, one value per update).

    With ``shipped`` (a policy folder) the policy is loaded from it, and refused with a ``ValueError`` unless it
    was trained with ``cfg.noop`` (the same action space) on these SAEs and this model. Otherwise a fresh policy
    (``seed``) is trained with :func:`steerlab.control.rl.train_control` on ``sampler`` and saved to ``out``
    (``cfg.json`` with the history, the last 20 logged episodes and the entries of ``meta``, e.g. the SAE folders;
    ``policy.safetensors``): that folder is what ships as ``shipped``."""
    if shipped is not None:
        policy = control.load_policy(shipped, sae=saes, model=model, noop=cfg.noop)
        return policy, json.loads((Path(shipped) / "cfg.json").read_text()).get("history", {})
    policy = control.new_policy(cfg, saes, model, seed=seed)
    res = train_control(model, policy, saes, sampler, rl_cfg, callbacks, reward_fn)
    control.save_policy(policy, out, history=dict(res.history), choices=res.choices[-20:], **(meta or {}))
    return policy, dict(res.history)


def noop_share(chosen: Sequence[Sequence[dict]], d_sae: int) -> float:
    """Share of the steps of :func:`chosen_features` at which the policy took the no-op (feature ``d_sae``): how
    often a policy with a "no steering" action leaves the token alone (0 for the paper's action)."""
    steps = [f for ch in chosen for c in ch for f in c["features"]]
    return sum(f >= d_sae for f in steps) / max(len(steps), 1)


# ------------------------------------------------------------------------------------------------ settings
@dataclass
class Setting:
    """One CRL setting of a task suite.

    Attributes:
        task: the task family (``mcqa``, ``reasoning``, ``conflict``); RLVR trains one model per task.
        heldout: the held-out evaluation prompts.
        sampler: ``sampler(rng) -> Example``, training prompts (never the held-out ones).
        reward: what the reward pays for, in words (for the notebook's table).
    """

    task: str
    heldout: list
    sampler: Callable[[random.Random], Example]
    reward: str


def _pool_sampler(pool: Sequence[Example]) -> Callable[[random.Random], Example]:
    return lambda rng: pool[rng.randrange(len(pool))]


def control_settings(suite, n_eval: int, seed: int = 0, n_train: int = 512) -> dict[str, Setting]:
    """The CRL settings ``suite`` offers, by name.

    tinyworld (a suite with a ``world``): ``mcqa_single``, ``mcqa_multi`` and ``reasoning`` on the world's
    held-out sets, trained on prompts of the same distribution from other seeds
    (``steerlab.tasks.tinyworld.heldout_like_sampler``). Any other suite: ``conflict`` (knowledge-source control:
    the suite's conflicts, rewarded for the *context's* answer, i.e. each example's ``score``, whose gold is the
    context value; trained on the ``fit`` split, evaluated on ``eval``: disjoint subjects) and ``reasoning``
    (``suite.reasoning()``, training prompts from other seeds), each only when the suite provides it.
    """
    world = getattr(suite, "world", None)
    if world is not None:
        from steerlab.tasks.tinyworld import heldout_like_sampler

        evals = world.eval_sets(n_eval)
        return {s: Setting(t, evals[f"{t}_heldout"], heldout_like_sampler(world, t), "the gold answer")
                for s, t in (("mcqa_single", "mcqa"), ("mcqa_multi", "mcqa"), ("reasoning", "reasoning"))}
    out = {}
    conflicts = suite.conflicts(n_eval, seed=seed, split="eval")
    if conflicts:
        out["conflict"] = Setting("conflict", conflicts, _pool_sampler(suite.conflicts(n_train, seed + 1, "fit")),
                                  "the context's answer (meta['context_value'])")
    reasoning = suite.reasoning(n_eval, seed=seed + 12345)
    if reasoning:
        out["reasoning"] = Setting("reasoning", reasoning, _pool_sampler(suite.reasoning(n_train, seed + 1)),
                                   "the sum (meta['result'])")
    return out


def summary(accuracy: dict, extra: dict | None = None, **settings) -> dict:
    """Notebook 04's metrics: ``<setting>_<method>_acc`` and ``<setting>_agreement`` (CRL against RLVR, when
    RLVR ran) from ``accuracy = {setting: (accs, finals)}`` (:func:`compare_methods`), then the sections'
    metrics ``extra`` and the run's settings (``retrained``, ``n_updates``, ...)."""
    out = {}
    for s, (accs, finals) in accuracy.items():
        out.update({f"{s}_{m}_acc": a for m, a in accs.items()})
        if "rlvr" in finals:
            out[f"{s}_agreement"] = agreement(finals["crl"], finals["rlvr"])
    return {**out, **(extra or {}), **settings}


# ------------------------------------------------------------------------------------------- probe target
def single_token_words(model, words: Sequence[str]) -> tuple[list[str], list[int]]:
    """The words of ``words`` (in order, each once) that the model writes as one token after a space, and those
    token ids: the candidate targets of the known-answer probe (its reward reads decoded text, its target feature
    is read from the unembedding column of that one token)."""
    kept, ids = [], []
    for w in dict.fromkeys(words):
        tok = model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(tok) == 1:
            kept.append(w)
            ids.append(int(tok[0]))
    return kept, ids


def first_word_reward(target: str) -> Callable[[Example, str], float]:
    """Reward 1 when the completion's answer span starts with the word ``target`` (SQuAD-normalised text)."""
    from steerlab.core.text import normalize_answer

    want = normalize_answer(target)
    return lambda example, completion: float(normalize_answer(answer_span(completion)).split()[:1] == [want])
