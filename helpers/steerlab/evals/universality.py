"""Universality of what CRL learned (Cho, Wu, Koshiyama, arXiv 2602.10437, §6 of the paper's analysis).

Two questions, both answered by measurement:

1. **Transfer.** Does a control policy trained on one task help on another task, or at another layer? A head is
   moved with :func:`steerlab.control.rebind` (only where the SAEs have the policy's ``(d_sae, d_model)``
   shape) and evaluated on held-out prompts against the frozen model: :func:`transfer_table`.
2. **Same directions as end-to-end RL?** RLVR fine-tunes the whole LM with the same reward. Its effect on the
   residual stream at layer ``l`` is the mean activation difference ``Δ = E[h_rlvr(x) - h_base(x)]`` over the
   positions CRL steers (the last prompt position and every generated token, on the same token sequences).
   Projected onto the SAE's decoder directions, ``p_f = <Δ, W_dec[f]> / ||W_dec[f]||``, it names the SAE features
   RLVR moved the residual stream along. CRL's own choice is the empirical distribution ``q_f`` of the features
   its greedy policy adds. :func:`rlvr_alignment` compares the two: overlap of the top-``k`` features of ``p``
   and of ``q`` (with its chance level ``k / d_sae``), the cosine between ``Δ`` and CRL's mean added vector
   ``coef * sum_f q_f W_dec[f]``, and the mean percentile of CRL's choices in the ranking of ``p`` (0.5 by
   chance, 1 = CRL always picks RLVR's top direction).
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.control import policy as control
from steerlab.evals import control as rl_eval
from steerlab.sae.io import hook_name_for


# ------------------------------------------------------------------------------------------------- transfer
def transfer_table(model, saes: Mapping[int, object], policies: Mapping[str, control.ControlPolicy],
                   eval_sets: Mapping[str, Sequence], layers: Sequence[int] | None = None):
    """Held-out accuracy of every policy on every task of ``eval_sets`` (task -> examples), at the layers it was
    trained on and, for single-layer policies, moved to each other layer in ``layers`` whose SAE has its shape.

    Returns a DataFrame with one row per (policy, task, layers): ``trained`` (True on the policy's own layers),
    ``base_acc`` (frozen model), ``steered_acc`` and ``gain``; a move the shapes forbid is left out.
    """
    import pandas as pd

    layers = sorted(saes) if layers is None else list(layers)
    base = {t: rl_eval.accuracy_and_answers(exs, rl_eval.answers(model, exs))[0] for t, exs in eval_sets.items()}
    rows = []
    for name, policy in policies.items():
        own = policy.cfg.layers
        targets = [own] + ([(l,) for l in layers if l != own[0]] if len(own) == 1 else [])
        for target in targets:
            try:
                pol = policy if target == own else control.rebind(policy, saes, {own[0]: target[0]}, model)
            except ValueError:
                continue
            for task, exs in eval_sets.items():
                acc = rl_eval.accuracy_and_answers(exs, rl_eval.answers(model, exs, pol, {l: saes[l] for l in target}))[0]
                rows.append(dict(policy=name, layers=list(target), trained=target == own, task=task,
                                 base_acc=base[task], steered_acc=acc, gain=acc - base[task]))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ CRL versus RLVR
def steered_positions(model, examples: Sequence, completions: Sequence[str]) -> list[tuple[Tensor, slice]]:
    """(tokens of prompt + completion, the positions CRL steers) per example. Under the KV cache CRL edits the
    current token of every forward call: the last prompt position, then each generated token that is fed back
    (all but the last one)."""
    out = []
    for e, c in zip(examples, completions):
        n_prompt = model.to_tokens(e.prompt).shape[1]
        text = c.rstrip() if c[:1].isspace() else (" " + c.strip() if c.strip() else "")  # decoded text keeps its space
        full = model.to_tokens(e.prompt + text)[0]
        out.append((full, slice(n_prompt - 1, max(n_prompt, len(full) - 1))))
    return out


@torch.no_grad()
def activation_difference(model, tuned, layer: int, examples: Sequence,
                          completions: Sequence[str] | None = None) -> Float[Tensor, " d_model"]:
    """``Δ = mean(h_tuned - h_model)`` of ``blocks.{layer}.hook_resid_post`` over the steered positions of the
    same token sequences (prompt + ``completions``, by default the frozen model's greedy completions)."""
    if completions is None:
        completions = rl_eval.answers(model, examples)
    name = hook_name_for(layer)
    diffs = []
    for toks, pos in steered_positions(model, examples, completions):
        _, c0 = model.run_with_cache(toks[None], names_filter=name)
        _, c1 = tuned.run_with_cache(toks[None], names_filter=name)
        diffs.append(c1[name][0, pos] - c0[name][0, pos])
    return torch.cat(diffs).mean(0)


def decoder_projection(delta: Float[Tensor, " d_model"], W_dec: Float[Tensor, "d_sae d_model"]) -> Float[Tensor, " d_sae"]:
    """``p_f = <Δ, W_dec[f]> / ||W_dec[f]||``: how far RLVR moved the residual stream along each feature."""
    W = W_dec.detach()
    return (W @ delta) / W.norm(dim=-1).clamp_min(1e-8)


def crl_feature_counts(chosen: Sequence[Sequence[dict]], layer: int, d_sae: int) -> Counter:
    """How often the greedy policy added each feature at ``layer`` (no-op excluded), from
    :func:`steerlab.rl_eval.chosen_features`."""
    return Counter(f for steps in chosen for st in steps if st["layer"] == layer for f in st["features"] if f < d_sae)


def rlvr_alignment(projection: Float[Tensor, " d_sae"], counts: Counter, W_dec: Float[Tensor, "d_sae d_model"],
                   delta: Float[Tensor, " d_model"], k: int = 10) -> dict[str, float]:
    """Compare RLVR's feature projection with CRL's choices (see the module docstring).

    Keys: ``overlap_at_k`` (|top-k of p ∩ top-k of q| / k, over CRL's distinct features if fewer than k),
    ``overlap_chance`` (k / d_sae), ``cosine`` (Δ versus CRL's mean added direction; 0 when CRL never steers),
    ``percentile`` (count-weighted mean percentile of CRL's features in the ranking of p; NaN when none),
    ``n_crl_features`` (distinct features CRL used).
    """
    d_sae = projection.shape[0]
    if not 0 < k <= d_sae:
        raise ValueError(f"k must lie in 1..d_sae={d_sae} (got {k})")
    top_p = set(torch.topk(projection, k).indices.tolist())
    top_q = [f for f, _ in counts.most_common(k)]
    overlap = len(top_p & set(top_q)) / max(1, min(k, len(top_q))) if top_q else 0.0
    rank = torch.empty(d_sae)
    rank[projection.argsort()] = torch.arange(d_sae, dtype=torch.float) / max(1, d_sae - 1)
    total = sum(counts.values())
    if total:
        q = torch.zeros(d_sae)
        for f, n in counts.items():
            q[f] = n / total
        v = q @ W_dec.detach()
        cosine = float(torch.nn.functional.cosine_similarity(v, delta, dim=0))
        percentile = float((q * rank).sum())
    else:
        cosine, percentile = 0.0, float("nan")
    return dict(overlap_at_k=overlap, overlap_chance=k / d_sae, cosine=cosine, percentile=percentile,
                n_crl_features=len(counts))
