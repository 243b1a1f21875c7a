"""Fit an SAE's decoder to what the model downstream needs: KL fine-tuning of the decoder directions.

An SAE trained on reconstruction alone (MSE, as SAELens trains it) spends its error where the activation's
variance is. The layers after the SAE may rely on directions of small variance, so splicing the SAE in costs more
downstream than its explained variance suggests. End-to-end SAEs (Braun et al. 2024, "Identifying Functionally
Important Features with End-to-End Sparse Dictionary Learning", arXiv 2405.12241) train on the KL divergence
between the clean and the spliced next-token distributions instead. We apply that loss as a short fine-tuning
after SAELens has trained the SAE, and we change as little as possible:

* **Only the decoder directions move.** ``W_enc``, ``b_enc`` and ``b_dec`` are frozen, and each decoder row keeps
  its norm. The norm matters because SAELens's TopK SAEs (``rescale_acts_by_decoder_norm``) scale each latent's
  encoder output by it.
* As a result, the **code is exactly the SAE's own**: which latents fire, and how strongly, on every token. Dead
  latents, concept detectors, and everything that reads the encoder (SPARE, feature dashboards) stay as they
  were. What each latent *writes* back into the residual changes.
* The loss, averaged over non-pad next-token targets, is
  ``KL(p_clean || p_spliced) + fvu_weight * FVU``. ``FVU`` is the fraction of the activation's variance that the
  reconstruction misses on kept tokens. This term keeps the reconstruction honest, because the decoder is also
  what explanations read (notebook 02).

:func:`finetune_decoder_kl` fine-tunes an SAE in memory. :func:`finetune_folder` fine-tunes an SAE saved in
SAELens format, writing its weights back atomically. ``steerlab.sae.train_saes`` calls it when the recipe's
``kl_finetune_steps`` is positive.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from jaxtyping import Int
from safetensors.torch import save_file
from torch import Tensor


@contextlib.contextmanager
def _only_grad(trainable: list[Tensor], *modules):
    """Inside: every parameter of ``modules`` is frozen except ``trainable``; outside: as before."""
    params = [p for m in modules for p in m.parameters()]
    before = [p.requires_grad for p in params]
    keep = {id(t) for t in trainable}
    try:
        for p in params:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
            p.grad = None


def finetune_decoder_kl(model, sae, rows: Int[Tensor, "batch pos"], steps: int = 200, lr: float = 3e-4,
                        batch_size: int = 64, fvu_weight: float = 1.0, log_every: int = 10) -> dict[str, list]:
    """Fine-tune the decoder directions of ``sae`` (in place) so that splicing it into ``model`` at its hook
    changes the next-token distribution less (see the module docstring). ``rows`` are ``<bos> text <pad>...``
    token rows (``steerlab.sae.token_rows``), used in order, ``batch_size`` rows per Adam step, cycling when
    they run out. Position 0 (``<bos>``) keeps its clean value, as in ``steerlab.sae.splice_hooks``.

    Returns the curve ``{"step", "kl", "fvu"}`` (training-batch values every ``log_every`` steps)."""
    from steerlab.sae.io import check_fits

    check_fits(model, sae)
    if steps <= 0 or batch_size <= 0 or lr <= 0 or fvu_weight < 0:
        raise ValueError(f"finetune_decoder_kl needs steps, batch_size, lr > 0 and fvu_weight >= 0 (got {steps}, "
                         f"{batch_size}, {lr}, {fvu_weight})")
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty [batch, pos] tensor of token ids (got shape {tuple(rows.shape)})")
    hook, pad = sae.cfg.metadata.hook_name, model.tokenizer.pad_token_id
    norms = sae.W_dec.detach().norm(dim=-1, keepdim=True).clone()
    opt = torch.optim.Adam([sae.W_dec], lr=lr)
    curve = {"step": [], "kl": [], "fvu": []}
    with _only_grad([sae.W_dec], model, sae):
        for step in range(1, steps + 1):
            idx = torch.arange((step - 1) * batch_size, step * batch_size) % rows.shape[0]
            tokens = rows[idx]
            kl, fvu = _losses(model, sae, tokens, hook, pad)
            opt.zero_grad()
            (kl + fvu_weight * fvu).backward()
            opt.step()
            with torch.no_grad():
                sae.W_dec.mul_(norms / sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            if step % log_every == 0 or step == steps:
                curve["step"].append(step)
                curve["kl"].append(float(kl.detach()))
                curve["fvu"].append(float(fvu.detach()))
    sae.eval()
    return curve


def _losses(model, sae, tokens: Int[Tensor, "batch pos"], hook: str, pad: int) -> tuple[Tensor, Tensor]:
    """(mean KL(p_clean || p_spliced) over non-pad targets, FVU of the reconstruction over kept tokens)."""
    from steerlab.sae.metrics import next_token_kl

    with torch.no_grad():
        clean, cache = model.run_with_cache(tokens, names_filter=hook)
        logp_clean = clean[:, :-1].float().log_softmax(-1)
    x = cache[hook]
    recon = torch.cat([x[:, :1], sae(x[:, 1:]).to(x.dtype)], 1)  # <bos> stays clean
    with model.hooks(fwd_hooks=[(hook, lambda act, hook=None: recon)]):
        logp = model(tokens)[:, :-1].float().log_softmax(-1)
    targets = tokens[:, 1:] != pad
    kl = next_token_kl(logp_clean, logp)[targets].mean()
    kept = tokens != pad
    kept[:, 0] = False
    err, centred = (recon - x)[kept], x[kept] - x[kept].mean(0)
    return kl, err.pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)


def finetune_folder(model, path: str | Path, rows: Int[Tensor, "batch pos"], **kwargs) -> tuple[object, dict]:
    """Load the SAE saved at ``path`` (SAELens format), fine-tune it with :func:`finetune_decoder_kl`
    (``kwargs``), and write its weights back to ``path/sae_weights.safetensors``. The weights go to a temporary
    file first, which then replaces the original, so a failure leaves the folder as it was. Returns
    ``(sae, curve)``."""
    from steerlab.sae.io import load_sae

    path = Path(path)
    sae = load_sae(path, model=model)
    curve = finetune_decoder_kl(model, sae, rows, **kwargs)
    target = path / "sae_weights.safetensors"
    tmp = target.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, str(tmp))
    os.replace(tmp, target)
    return sae, curve
