"""SAE codes and fingerprints, model-agnostic: the encoder read before any top-k cut, and short weight hashes.

Conventions (SAELens): ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.
"""

from __future__ import annotations

import hashlib

import torch
from jaxtyping import Float
from torch import Tensor


def fingerprint(t: Tensor) -> str:
    """A short hash of a weight tensor: identifies an SAE (its ``W_dec``) or a model (its ``W_U``)."""
    return hashlib.sha256(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """A short hash of the model's unembedding: tells two checkpoints of the same architecture apart."""
    return fingerprint(model.W_U)


def encode_pre_topk(sae, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
    """The SAE code before any top-k cut or threshold: ``z = ReLU((x - b_dec) @ W_enc + b_enc)``.

    Topk SAEs trained with ``rescale_acts_by_decoder_norm`` rank latents by ``z * |W_dec|``; that scaling is
    applied here too, so the top-k of this code is the SAE's own code.
    """
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"x has last dimension {x.shape[-1]} but the SAE reads d_in={sae.cfg.d_in}")
    return torch.relu(encoder_preactivation(sae, x))


def rescales_by_decoder_norm(sae) -> bool:
    """Whether the SAE ranks/scales its latents by the decoder row norms (``rescale_acts_by_decoder_norm``)."""
    return bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))


def encoder_preactivation(sae, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
    """The encoder input before ReLU / top-k / threshold: ``(x - b_dec) @ W_enc + b_enc``, times the decoder
    row norms for ``rescale_acts_by_decoder_norm`` SAEs (as SAELens' ``encode`` does)."""
    pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    return pre * sae.W_dec.norm(dim=-1) if rescales_by_decoder_norm(sae) else pre


