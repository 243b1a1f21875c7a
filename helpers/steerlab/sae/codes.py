"""Splicing an SAE into a model and harvesting the activations it reads."""

from __future__ import annotations

from typing import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor


def splice_hooks(sae, keep_bos: bool = True) -> list:
    """``[(hook_name, fn)]`` replacing the hook's activation by the SAE reconstruction.

    With ``keep_bos`` position 0 of a multi-token pass (``<bos>``, never in the training activations) keeps
    its clean value; a one-token pass (a KV-cached generation step) is always replaced.
    """
    hook = sae.cfg.metadata.hook_name
    if hook is None:
        raise ValueError("the SAE names no hook: set sae.cfg.metadata.hook_name")

    def fn(x, hook=None):
        recon = sae(x).to(x.dtype)
        if keep_bos and x.shape[1] > 1:
            recon[:, 0] = x[:, 0]
        return recon

    return [(hook, fn)]


def iter_activations(model, rows: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 256,
                     exclude: tuple[int, ...] = ()) -> Iterator[Float[Tensor, "n d_model"]]:
    """Activations of ``hook_name`` on ``rows`` (batches of rows), flattened over kept positions."""
    excl = torch.tensor(list(exclude), dtype=torch.long)
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name]
        keep = ~torch.isin(tokens, excl) if len(excl) else torch.ones_like(tokens, dtype=torch.bool)
        yield acts[keep]
