"""The jailbreak defence of Wu et al.'s released code (``TopKSAE.edit_generate`` in ``autoencoder.py`` of
JacksonWuxs/SteeringLLMs_with_MIExplanations), registered as ``enforce`` in :mod:`steerlab.steer.registry`.

The paper writes amplification and calibration (:mod:`steerlab.steer.features`); the released script
(``editing_SALADBench.py``: ``sae.enforce_actv(defence_features, magnitude=2.5)``) runs another edit, on every
position the SAE's layer outputs (prompt and generated tokens), after one layer. For the feature set ``S``
(sorted, duplicates dropped, as ``enforce_actv`` does) and a magnitude ``m``, at each position ``x`` ``[d_model]``:

* ``h = (x - b_dec) @ W_enc[:, S] + b_enc[S]``       the encoder score of each feature, before any top-k cut;
* ``vals = ReLU(m - ReLU(h))``                       each feature's shortfall below ``m``;
* ``x' = x + m * (vals / sum(vals)) @ W_dec[S]``     a total of ``m`` shared in proportion to the shortfalls;
* ``x'' = x' * |x| / |x'|``                          rescaled to the input's L2 norm.

Where the released code and this one part:

* the released SAE is tied (``W_dec = W_enc.T``), so its write ``@ W_enc[:, S].T`` is the decoder rows; here the
  write is ``W_dec[S]`` (what the SAE reconstructs, as every steerlab feature edit writes);
* a position where every feature already reaches ``m`` (``sum(vals) = 0``) gives NaN in the released code; here it
  is left as it is (nothing is added; the rescale is then the identity);
* ``h`` is :func:`steerlab.core.activations.encoder_preactivation`, which for an SAE that ranks latents by decoder
  norm (``rescale_acts_by_decoder_norm``) carries that scale, as the SAE's own code does; for a standard SAE, and
  the released one, it is the formula above;
* the released code computes in float32 and hands bfloat16 back to its model; here the model's dtype is kept;
* its optional gate (``condit_actv``: edit only where other features fire) is not used by its defence script and
  is not offered.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.core.activations import encoder_preactivation
from steerlab.core.hooks import Hook, check_features, check_strength, edit_hook


def enforce_edit(sae, features: Sequence[int], magnitude: float
                 ) -> Callable[[Float[Tensor, "... d_model"]], Float[Tensor, "... d_model"]]:
    """``x -> x''`` of the module docstring for the feature set ``features`` and magnitude ``m`` (pure)."""
    idx = sorted(set(check_features(features, sae.W_dec.shape[0])))
    if not idx:
        raise ValueError("the feature set S is empty: pick at least one feature")
    W = sae.W_dec.detach()[idx].float()  # [n_feat, d_model]
    m = check_strength(magnitude, "magnitude")

    def edit(x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        x = x.float()
        org = x.norm(dim=-1, keepdim=True)
        h = encoder_preactivation(sae, x).float()[..., idx]
        vals = torch.relu(m - torch.relu(h))
        total = vals.sum(-1, keepdim=True)
        share = torch.where(total > 0, vals / total.clamp_min(torch.finfo(vals.dtype).tiny), torch.zeros_like(vals))
        x = x + m * share @ W.to(x.device)
        return x * (org / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny))

    return edit


def enforce(hook_name: str, sae, features: Sequence[int], magnitude: float, positions: str = "all") -> list[Hook]:
    """The released defence at ``hook_name`` (default: every position, as the released code edits)."""
    return edit_hook(hook_name, enforce_edit(sae, features, magnitude), positions)
