"""SPARE (Zhao et al., NAACL 2025, arXiv 2410.15999): steering knowledge selection with SAE features.

As the authors' code does it (see METHODS.md):

1. :func:`label_conflicts` runs the model greedily on knowledge-conflict prompts and labels each by its own
   answer: the context value (``sub``) -> ``y = 1`` (uses context), the memory value (``org``) -> ``y = 0``,
   anything else is dropped. It also stores ``ss_loss`` and ``so_loss``: as the authors' ``group_prompts.py``
   computes them (``model(input_ids, labels=input_ids).loss``), the model's mean NLL over the WHOLE sequence
   ``prompt + " " + sub`` (resp. ``org``): demonstrations, context, question and answer, every token after
   ``<bos>`` (:func:`steerlab.core.run.sequence_nll`). The authors' sequence also ends with the blank line that
   separates examples; steerlab's suites have no common separator, so the sequence ends with the answer. The two
   sequences share every token but the answer's, so the weights below come out nearly uniform.
   ``loss="answer"`` is the named alternative: ``-log p(value | prompt)`` summed over the value's tokens
   (:func:`steerlab.steer.vectors.answer_nll`), which keeps the weights about the answer.
2. :func:`hidden_states` takes the residual stream at the last prompt position after each chosen block;
   :func:`fit_spare` encodes it with the layer's SAE before any top-k cut (``steerlab.sae.encode_pre_topk``).
3. Each feature is min-max scaled over the pooled prompts and ``I(z_j; y)`` is estimated by scikit-learn's
   ``mutual_info_classif`` (k-nearest neighbours). Features sorted by MI; the smallest prefix whose
   cumulative MI exceeds ``p`` of the total fixes a count ``n`` (all features if it is never exceeded); walking
   the features in MI order, each is put by ``E_j = mean(z_j | y=1) - mean(z_j | y=0)`` into ``Z_C`` (``E_j > 0``,
   context features) or ``Z_M`` (``E_j < 0``, memory features), a feature with ``E_j = 0`` is skipped, until
   ``n`` are chosen (the authors' ``select_functional_activations``; :func:`cut_features`).
4. Targets ``w_C = sum_{y_i=1} pi_i z_i[Z_C]`` with ``pi_i ∝ so_loss_i / (ss_loss_i + so_loss_i)`` and
   ``w_M = sum_{y_i=0} pi_i z_i[Z_M]`` with ``pi_i ∝ ss_loss_i / (ss_loss_i + so_loss_i)`` (the prompts
   where the model was most sure weigh most); ``alpha`` scales them at edit time.
5. :func:`spare_hooks`, toward context: ``z- = min(alpha w_M, z)`` on ``Z_M``, ``z+ = max(alpha w_C - z, 0)``
   on ``Z_C``, ``h' = h - z- W_dec[Z_M] + z+ W_dec[Z_C]`` at the last prompt position of every fitted layer
   (toward memory swaps C and M). ``z`` is read with the encoder and written with decoder rows
   (``steerlab.steer.features`` explains why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from sklearn.feature_selection import mutual_info_classif
from torch import Tensor
from transformer_lens import HookedTransformer

from steerlab.core import hooks, run
from steerlab.core.text import exact_match
from steerlab.steer import decoding, vectors
from steerlab.steer.features import feature_reader


@dataclass
class ConflictLabels:
    """The model's own behaviour on conflict prompts (only prompts it answered with sub or org).

    Attributes:
        examples: the kept examples, in order.
        y: ``[n]`` 1 = answered with the context value, 0 = with the memory value.
        ss_loss: ``[n]`` loss of the prompt followed by the context value (``loss`` of :func:`label_conflicts`).
        so_loss: ``[n]`` loss of the prompt followed by the memory value.
        n_dropped: prompts answered with neither value.
    """

    examples: list
    y: np.ndarray
    ss_loss: np.ndarray
    so_loss: np.ndarray
    n_dropped: int


@dataclass
class SpareFit:
    """SPARE's selected features and targets at one layer (feature ids index the SAE's ``d_sae`` axis).

    Attributes:
        hook_name: TransformerLens hook the SAE reads and the edit writes (e.g. ``blocks.2.hook_resid_post``).
        mi: ``[d_sae]`` mutual information of each feature with the label.
        context_features / memory_features: ``Z_C`` / ``Z_M``.
        w_context / w_memory: targets ``w_C`` over ``Z_C`` and ``w_M`` over ``Z_M`` (before ``alpha``).
        p: the cumulative-MI proportion used.
    """

    hook_name: str
    mi: np.ndarray
    context_features: list[int]
    memory_features: list[int]
    w_context: Tensor
    w_memory: Tensor
    p: float


LOSSES = ("sequence", "answer")  # ss/so losses: the authors' whole-sequence mean NLL, or the answer's summed NLL


def label_conflicts(model: HookedTransformer, examples: Sequence, loss: str = "sequence") -> ConflictLabels:
    """Label conflict examples (``meta`` has ``context_value`` and ``memory_value``, optionally
    ``memory_aliases``) by the model's own greedy answer of ``example.max_new_tokens`` tokens, matched on decoded
    text (``steerlab.core.text.exact_match``): the context value -> ``y = 1``, the memory value -> ``y = 0``,
    else dropped. ``loss="sequence"`` (the authors'): ss/so are the mean NLL of every token of
    ``prompt + " " + value`` after ``<bos>``; ``loss="answer"``: the NLL of the value's tokens after the prompt,
    summed (teacher-forced)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} (got {loss!r})")
    answers = decoding.greedy(model, examples)
    kept, y = [], []
    for e, a in zip(examples, answers):
        ctx = exact_match(a, [e.meta["context_value"]])
        mem = exact_match(a, [e.meta["memory_value"], *e.meta.get("memory_aliases", ())])
        if ctx == mem:  # neither (or, for a degenerate prompt, both)
            continue
        kept.append(e)
        y.append(int(ctx))
    prompts = [e.prompt for e in kept]

    def nll(key: str) -> np.ndarray:
        if not kept:
            return np.zeros(0)
        values = [e.meta[key] for e in kept]
        if loss == "answer":
            return vectors.answer_nll(model, prompts, values).numpy()
        return run.sequence_nll(model, [p + " " + v for p, v in zip(prompts, values)]).numpy()

    return ConflictLabels(kept, np.array(y, dtype=int), nll("context_value"), nll("memory_value"),
                          len(examples) - len(kept))


hidden_states = vectors.hidden_states  # the residual at the last prompt position (re-exported for SPARE's fit)


def select_features(z: np.ndarray, y: np.ndarray, p: float, seed: int = 0) -> tuple[np.ndarray, list[int], list[int]]:
    """MI of each column of ``z`` ``[n, d_sae]`` with ``y``; returns (mi, Z_C, Z_M) as in the module docstring."""
    if not 0 < p <= 1:
        raise ValueError(f"p (cumulative-MI proportion) must lie in (0, 1] (got {p})")
    if len(set(y.tolist())) < 2:
        raise ValueError("SPARE needs prompts of both behaviours (y = 0 and y = 1): label more conflict prompts")
    lo, hi = z.min(0), z.max(0)
    scaled = (z - lo) / np.where(hi > lo, hi - lo, 1.0)
    mi = mutual_info_classif(scaled, y, discrete_features=False, random_state=seed)
    zc, zm = cut_features(mi, z[y == 1].mean(0) - z[y == 0].mean(0), p)
    return mi, zc, zm


def cut_features(mi: np.ndarray, expectation: np.ndarray, p: float) -> tuple[list[int], list[int]]:
    """``(Z_C, Z_M)`` from each feature's MI and ``E_j`` as the authors' ``select_functional_activations`` does:
    ``n`` = the smallest count of top-MI features whose cumulative MI exceeds ``p * sum(MI)`` (strictly; all
    features if it never does); then, in MI order (ties: lower id first), ``E_j > 0`` joins ``Z_C`` and
    ``E_j < 0`` joins ``Z_M`` (``E_j = 0`` is skipped and does not count) until ``n`` features are chosen."""
    order = np.argsort(-mi, kind="stable")
    cum = np.cumsum(mi[order])
    above = np.nonzero(cum > p * cum[-1])[0] if len(cum) else np.zeros(0, dtype=int)
    n = int(above[0]) + 1 if len(above) else len(order)
    zc: list[int] = []
    zm: list[int] = []
    for j in order:
        if len(zc) + len(zm) >= n:
            break
        if expectation[j] > 0:
            zc.append(int(j))
        elif expectation[j] < 0:
            zm.append(int(j))
    return zc, zm


def fit_spare(labels: ConflictLabels, hidden: Float[Tensor, "batch d_model"], sae, hook_name: str, p: float,
              seed: int = 0) -> SpareFit:
    """Steps 2-4 at one layer: ``hidden`` holds the labelled prompts' last-position residuals."""
    from steerlab.core.activations import encode_pre_topk

    with torch.no_grad():
        z = encode_pre_topk(sae, hidden).float()
    y = labels.y
    mi, zc, zm = select_features(z.numpy(), y, p, seed)
    w = np.where(y == 1, labels.so_loss, labels.ss_loss) / (labels.ss_loss + labels.so_loss)
    pi_c = torch.tensor(np.where(y == 1, w, 0.0) / max(w[y == 1].sum(), 1e-12), dtype=torch.float32)
    pi_m = torch.tensor(np.where(y == 0, w, 0.0) / max(w[y == 0].sum(), 1e-12), dtype=torch.float32)
    return SpareFit(hook_name, mi, zc, zm, pi_c @ z[:, zc], pi_m @ z[:, zm], p)


def spare_hooks(fits: Sequence[SpareFit], saes: Mapping[str, object], alpha: float, toward: str = "context",
                positions: str = "last_prompt") -> list[hooks.Hook]:
    """The SPARE edit at every fitted layer (``saes`` maps hook name -> SAE); ``toward`` is context|memory."""
    if toward not in ("context", "memory"):
        raise ValueError(f"toward must be 'context' or 'memory' (got {toward!r})")
    alpha = hooks.check_strength(alpha, "alpha")
    out: list[hooks.Hook] = []
    for fit in fits:
        out += hooks.edit_hook(fit.hook_name, edit_function(fit, saes[fit.hook_name], alpha, toward), positions)
    return out


def edit_function(fit: SpareFit, sae, alpha: float, toward: str = "context"):
    """SPARE's edit at one fitted layer as a function ``h -> h'`` of residual vectors ``[batch, pos, d_model]``
    (what :func:`spare_hooks` applies at the selected positions)."""
    if toward not in ("context", "memory"):
        raise ValueError(f"toward must be 'context' or 'memory' (got {toward!r})")
    alpha = hooks.check_strength(alpha, "alpha")
    up, w_up, down, w_down = ((fit.context_features, fit.w_context, fit.memory_features, fit.w_memory)
                              if toward == "context" else
                              (fit.memory_features, fit.w_memory, fit.context_features, fit.w_context))
    return _spare_edit(sae, up, alpha * w_up, down, alpha * w_down)


def _spare_edit(sae, up: list[int], target_up: Tensor, down: list[int], target_down: Tensor):
    # built once per hook: one encode per forward pass reads both feature sets, decoder rows sliced here
    read = feature_reader(sae, list(down) + list(up))
    W_dec = sae.W_dec.detach().float()
    W_down, W_up, n_down = W_dec[list(down)], W_dec[list(up)], len(down)

    def edit(h: Float[Tensor, "batch pos d_model"]) -> Tensor:
        z = read(h)  # both codes from the unedited h, as the authors' code does
        z_down, z_up = z[..., :n_down], z[..., n_down:]
        if down:
            h = h - torch.minimum(target_down.to(h.device), z_down) @ W_down
        if up:
            h = h + torch.clamp(target_up.to(h.device) - z_up, min=0) @ W_up
        return h

    return edit


def fit_layers(labels: ConflictLabels, hidden: Mapping[str, Tensor], saes: Mapping[str, object],
               hook_names: Sequence[str], p: float, seed: int = 0) -> list[SpareFit]:
    """:func:`fit_spare` at each hook name (``hidden`` and ``saes`` are keyed by hook name)."""
    return [fit_spare(labels, hidden[h], saes[h], h, p, seed) for h in hook_names]
