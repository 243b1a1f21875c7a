"""Splicing an SAE into a model and harvesting the activations it reads."""

from __future__ import annotations

from typing import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor


def splice_hooks(sae, keep_bos: bool = True) -> list:
    """``[(hook_name, fn)]`` replacing the hook's activation by the SAE reconstruction.

    With ``keep_bos`` the ``<bos>`` and padding positions of a multi-token pass (never in the training
    activations) keep their clean values: where steerlab's run functions announce them
    (:func:`steerlab.core.hooks.special_positions`; on a left-padded batch ``<bos>`` follows the padding),
    else position 0. A one-token pass (a KV-cached generation step) is always replaced.
    """
    from steerlab.core.hooks import special_positions

    hook = sae.cfg.metadata.hook_name
    if hook is None:
        raise ValueError("the SAE names no hook: set sae.cfg.metadata.hook_name")

    def fn(x, hook=None):
        recon = sae(x).to(x.dtype)
        if keep_bos and x.shape[1] > 1:
            special = special_positions(x.shape[1])
            if special is not None and special.shape[0] == x.shape[0]:
                special = special.to(x.device)
                recon[special] = x[special]
            else:
                recon[:, 0] = x[:, 0]
        return recon

    return [(hook, fn)]


def stop_layer(hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still computes ``hook_name`` (``blocks.{L}.*`` -> ``L + 1``; ``None`` for any
    other hook: run the whole model). Skips the later blocks and the unembedding when only a hook is read."""
    parts = hook_name.split(".")
    return int(parts[1]) + 1 if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def iter_activations(model, rows: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 256,
                     exclude: tuple[int, ...] = (), skip_first: bool = True) -> Iterator[Float[Tensor, "n d_model"]]:
    """Activations of ``hook_name`` on ``rows`` (batches of rows), flattened over kept positions: not a token in
    ``exclude`` and, with ``skip_first``, not position 0 (a real model's first position has a residual norm
    many times the others, whatever its token)."""
    excl = torch.tensor(list(exclude), dtype=torch.long)
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=stop_layer(hook_name))
        acts = cache[hook_name]
        keep = ~torch.isin(tokens, excl) if len(excl) else torch.ones_like(tokens, dtype=torch.bool)
        if skip_first:
            keep[:, 0] = False
        yield acts[keep]
