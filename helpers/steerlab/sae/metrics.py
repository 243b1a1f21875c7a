"""SAE quality by the field's own measures, for any SAE on any model (no task suite needed).

Reconstruction and sparsity are measured on held-out token rows (position 0, ``<bos>`` and ``<pad>`` left out,
as in training: a real model's first position has a residual norm many times the others); the downstream
measures splice the SAE into the forward pass with
:func:`steerlab.sae.splice_hooks` (every position but ``<bos>``):

* ``explained_variance`` = 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 over all kept tokens;
* ``mean_l0``: mean number of active latents per token;
* ``dead_fraction``: latents that never fire on the evaluation tokens; ``dense_fraction``: latents that fire
  on more than ``dense_threshold`` of them;
* ``ce_loss_recovered`` = (CE_zero - CE_spliced) / (CE_zero - CE_clean), with CE the next-token loss over
  non-pad targets and CE_zero the loss with the hook's activation zeroed at the same positions;
* ``kl_to_clean``: mean KL(p_clean || p_spliced) of the next-token distributions over non-pad positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from steerlab.sae.codes import iter_activations, splice_hooks
from steerlab.sae.io import check_fits


@dataclass
class ReconStats:
    """Reconstruction and sparsity of an SAE on a set of activations."""

    explained_variance: float  # 1 - SSE / total variance
    mse: float  # mean squared error per element
    mean_l0: float  # active latents per token
    dead_fraction: float  # latents never active
    dense_fraction: float  # latents active on more than dense_threshold of tokens
    n_tokens: int  # activations evaluated
    firing_rate: Tensor  # [d_sae] fraction of tokens on which each latent fires


@torch.no_grad()
def reconstruction_stats(sae, model, rows: Int[Tensor, "batch pos"], dense_threshold: float = 0.1,
                         batch_size: int = 256) -> ReconStats:
    """Explained variance, L0, dead and dense fractions of ``sae`` on the hook activations of ``rows`` (position
    0, ``<bos>`` and ``<pad>`` excluded)."""
    check_fits(model, sae)
    tok = model.tokenizer
    sse = 0.0
    n = 0
    s1 = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0 = 0.0
    for x in iter_activations(model, rows, sae.cfg.metadata.hook_name, batch_size,
                              exclude=(tok.bos_token_id, tok.pad_token_id)):
        z = sae.encode(x)
        x_hat = sae.decode(z)
        sse += float(((x_hat - x) ** 2).sum())
        s1 += x.double().sum(0)
        s2 += (x.double() ** 2).sum()
        active = z > 0
        fires += active.double().sum(0)
        l0 += float(active.sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError("no activations to evaluate: the rows hold only <bos>/<pad> tokens after position 0")
    total_var = float(s2 - (s1 ** 2).sum() / n)
    rate = (fires / n).float()
    return ReconStats(explained_variance=1 - sse / total_var, mse=sse / (n * sae.cfg.d_in), mean_l0=l0 / n,
                      dead_fraction=float((rate == 0).float().mean()),
                      dense_fraction=float((rate > dense_threshold).float().mean()), n_tokens=n, firing_rate=rate)


def _zero_hooks(hook_name: str) -> list:
    def fn(x, hook=None):
        out = torch.zeros_like(x)
        if x.shape[1] > 1:
            out[:, 0] = x[:, 0]
        return out

    return [(hook_name, fn)]


def next_token_kl(logp_clean: Tensor, logp: Tensor) -> Tensor:
    """KL(p_clean || p) per position, from log-probabilities over the vocabulary (last dimension)."""
    return (logp_clean.exp() * (logp_clean - logp)).sum(-1)


@torch.no_grad()
def downstream_loss(sae, model, rows: Int[Tensor, "batch pos"], batch_size: int = 128,
                    max_logits: int = 2 ** 26) -> dict[str, float]:
    """Clean, spliced and zero-ablated next-token CE, ``ce_loss_recovered`` and ``kl_to_clean``.

    Targets are the non-pad tokens after position 0; position 0 keeps its clean activation in both
    interventions. Batches hold at most ``max_logits`` logits (``batch * pos * d_vocab``: a 262k-token vocabulary
    makes a few rows a batch)."""
    check_fits(model, sae)
    pad = model.tokenizer.pad_token_id
    hook = sae.cfg.metadata.hook_name
    batch_size = max(1, min(batch_size, max_logits // (rows.shape[1] * model.cfg.d_vocab)))
    totals = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl_to_clean": 0.0}
    n = 0
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        mask = tokens[:, 1:] != pad  # targets that are real tokens
        clean = None
        for name, hooks in (("clean", []), ("spliced", splice_hooks(sae)), ("zero", _zero_hooks(hook))):
            with model.hooks(fwd_hooks=hooks):
                logp = model(tokens)[:, :-1].float().log_softmax(-1)
            nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
            totals[f"ce_{name}"] += float(nll[mask].sum())
            if name == "clean":
                clean = logp
            elif name == "spliced":
                totals["kl_to_clean"] += float(next_token_kl(clean, logp)[mask].sum())
            del logp
        n += int(mask.sum())
    out = {k: v / n for k, v in totals.items()}
    gap = out["ce_zero"] - out["ce_clean"]
    out["ce_loss_recovered"] = (out["ce_zero"] - out["ce_spliced"]) / gap if gap > 0 else float("nan")
    return out
