"""Workarounds for TransformerLens per-call overheads, applied by :func:`steerlab.models.load_model`.

TL 3.9's ``Unembed.forward`` computes ``F.linear(x, W_U.T.contiguous(), b_U)``: it copies the whole unembedding
on every forward pass, so that bf16 matmuls accumulate in HF's order. For Gemma 3 (262,144-token vocabulary) that
copy is 670 MB and took 21 of 28 s of a 16-token TL ``generate`` (cProfile, one thread, 2026-12-02); ``GatedMLP``
does the same with its three weight matrices (2.6 of the remaining 6.4 s). Steerlab's versions multiply by the
weights as they are stored (same parameters, same hook points, same state dict); in float32 their outputs differ
from TL's by float rounding only (tested: logits within 1e-4 of the HF model, identical greedy generations).

For a large vocabulary the unembedding is also kept column-major (the same ``[d_model, d_vocab]`` tensor, stored
transposed): ``residual @ W_U`` then reads each vocabulary row contiguously, which took a 16-row Gemma unembedding
from 0.236 to 0.138 s on 2 cores (2026-12-02), the largest share of a batch-16 generation step.
"""

from __future__ import annotations

import torch
from transformer_lens.components import Unembed
from transformer_lens.components.mlps.gated_mlp import GatedMLP


class StoredLayoutUnembed(Unembed):
    """``Unembed`` that reads ``W_U [d_model, d_vocab]`` in its stored layout instead of copying its transpose."""

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        residual = self.hook_in(residual)
        return self.hook_out(torch.matmul(residual, self.W_U) + self.b_U)


class StoredLayoutGatedMLP(GatedMLP):
    """``GatedMLP`` that reads ``W_gate``, ``W_in [d_model, d_mlp]`` and ``W_out [d_mlp, d_model]`` as stored."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.W_gate.device != x.device:
            x = x.to(self.W_gate.device)
        pre_act = self.hook_pre(torch.matmul(x, self.W_gate))
        if self.cfg.is_layer_norm_activation() and self.hook_mid is not None and self.ln is not None:
            post_act = self.hook_post(self.ln(self.hook_mid(self.act_fn(pre_act))))
        else:
            pre_linear = self.hook_pre_linear(torch.matmul(x, self.W_in))
            post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
        return torch.matmul(post_act, self.W_out) + self.b_out


COLUMN_MAJOR_VOCAB = 32_768  # vocabularies at least this large get a column-major W_U


def speed_up(model):
    """Swap the model's unembedding and gated MLPs for the stored-layout versions above (in place: parameters,
    hook points and state dict keys unchanged; a large vocabulary's ``W_U`` stored column-major, same values) and
    return the model."""
    if type(model.unembed) is Unembed:
        model.unembed.__class__ = StoredLayoutUnembed
        W_U = model.unembed.W_U
        if W_U.shape[1] >= COLUMN_MAJOR_VOCAB and W_U.is_contiguous():
            W_U.data = W_U.data.T.contiguous().T
    for block in model.blocks:
        if type(block.mlp) is GatedMLP:
            block.mlp.__class__ = StoredLayoutGatedMLP
    return model
