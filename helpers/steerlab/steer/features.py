"""Feature steering with an SAE: amplify, calibrate, clamp and add (Wu et al., arXiv 2502.15576; SAELens habits).

Each builder returns ``[(hook_name, fn)]`` for ``with model.hooks(fwd_hooks=...)`` (via
:func:`steerlab.core.hooks.edit_hook`), so the positions rule of :mod:`steerlab.core.hooks` applies.

Which SAE vectors S are
-----------------------
* **Reading** a feature (how much of feature ``c`` is in ``x``) uses the *encoder*, with both biases:
  ``z_c(x) = ReLU((x - b_dec) @ W_enc[:, c] + b_enc[c])`` (before any top-k cut, see
  ``steerlab.core.activations.encode_pre_topk``). The encoder is what the SAE trained to detect the feature
  with; the decoder directions are not orthogonal, so ``x @ W_dec[c]`` mixes in every correlated feature.
  For a TopK SAE a second reading is offered, ``read="code"``: the SAE's own sparse code ``sae.encode(x)``,
  zero for every feature outside the input's top ``k``. It is more selective (a feature that the SAE does not
  use for an input is not amplified there) and weaker (an input whose trace of the feature stays below the
  cut is never pushed over it).
* **Writing** a feature uses its *decoder row* ``W_dec[c]`` (no bias): adding ``delta * W_dec[c]`` changes
  the SAE reconstruction by exactly ``delta`` units of feature ``c``, which is what SPARE and Wu et al. edit.

With these conventions, for the feature set ``S`` (``W = W_dec[S]`` of shape ``[n_feat, d_model]``):

* amplification ``X' = X + alpha z_S(X) W``                  (the paper's ``X + alpha ReLU(X S) S^T``);
* calibration   ``X' = X - z_S(X) W + beta mean_rows(W)``    (``X - ReLU(X S) S^T + beta s_bar``);
* clamp         ``X' = X + (value - z_S(X)) W``              (exact where the feature is active);
* add           ``X' = X + strength sum_rows(W)``            (a fixed amount of each feature, no reading).

Strengths (``alpha``, ``beta``, ``value``, ``strength``) must be finite; negative ones are legal and act by the
same formulas: ``alpha < 0`` shrinks the features read (``alpha = -1`` removes them), ``beta < 0`` and
``strength < 0`` subtract the decoder rows, ``value < 0`` clamps below zero (a code the SAE itself never
produces). Feature ids must be integers in ``[0, d_sae)`` (:func:`steerlab.core.hooks.check_features`).
"""

from __future__ import annotations

from typing import Callable, Sequence

from jaxtyping import Float
from torch import Tensor

from steerlab.core.hooks import Hook, check_features, check_strength, edit_hook

READS = ("encoder", "code")  # how z_S(x) is read: encoder before the top-k cut, or the SAE's sparse code


def decoder_rows(sae, features: Sequence[int]) -> Float[Tensor, "n_feat d_model"]:
    """``W_dec[S]`` as float32 (``S`` must not be empty; ids are integers in ``[0, d_sae)``)."""
    if len(features) == 0:
        raise ValueError("the feature set S is empty: pick at least one feature")
    return sae.W_dec.detach()[check_features(features, sae.W_dec.shape[0])].float()


def feature_reader(sae, features: Sequence[int], read: str = "encoder"
                   ) -> Callable[[Tensor], Float[Tensor, "... n_feat"]]:
    """``x -> z_S(x)`` for ``features``: the encoder activations before any top-k cut (``read="encoder"``) or the
    SAE's own sparse code (``read="code"``), as in the module docstring. ``read`` is checked here, once, so a
    hook built from the reader does no checking per forward pass."""
    from steerlab.core.activations import encode_pre_topk

    if read not in READS:
        raise ValueError(f"read must be one of {READS} (got {read!r})")
    idx = check_features(features, sae.W_dec.shape[0])
    encode = encode_pre_topk if read == "encoder" else (lambda s, x: s.encode(x))
    return lambda x: encode(sae, x.float())[..., idx]


def read_features(sae, x: Float[Tensor, "... d_model"], features: Sequence[int], read: str = "encoder"
                  ) -> Float[Tensor, "... n_feat"]:
    """``z_S(x)`` once (see :func:`feature_reader`)."""
    return feature_reader(sae, features, read)(x)


def amplify(hook_name: str, sae, features: Sequence[int], alpha: float, positions: str = "all",
            read: str = "encoder") -> list[Hook]:
    """Wu et al. amplification ``X' = X + alpha ReLU(X S) S^T`` (read: ``read``, write: decoder rows)."""
    alpha = check_strength(alpha, "alpha")
    W = decoder_rows(sae, features)
    z = feature_reader(sae, features, read)
    return edit_hook(hook_name, lambda x: x + alpha * z(x) @ W.to(x.device), positions)


def calibrate(hook_name: str, sae, features: Sequence[int], beta: float, positions: str = "all",
              read: str = "encoder") -> list[Hook]:
    """Wu et al. calibration ``X' = X - ReLU(X S) S^T + beta * mean(S)``: remove what the input holds of S
    (read as ``read``), then add a fixed amount ``beta`` of the mean decoder row of S."""
    beta = check_strength(beta, "beta")
    W = decoder_rows(sae, features)
    z, s_bar = feature_reader(sae, features, read), W.mean(0)
    return edit_hook(hook_name, lambda x: x - z(x) @ W.to(x.device) + beta * s_bar.to(x.device), positions)


def clamp(hook_name: str, sae, features: Sequence[int], value: float, positions: str = "all",
          read: str = "encoder") -> list[Hook]:
    """Clamp features to ``value``: ``x' = x + (value - z_S(x)) W_dec[S]`` (exact where the feature is active)."""
    value = check_strength(value, "value")
    W = decoder_rows(sae, features)
    z = feature_reader(sae, features, read)
    return edit_hook(hook_name, lambda x: x + (value - z(x)) @ W.to(x.device), positions)


def add(hook_name: str, sae, features: Sequence[int], strength: float, positions: str = "all") -> list[Hook]:
    """Add a fixed ``strength`` of every feature of S: ``x' = x + strength * sum_c W_dec[c]`` (no reading)."""
    strength = check_strength(strength, "strength")
    v = decoder_rows(sae, features).sum(0)
    return edit_hook(hook_name, lambda x: x + strength * v.to(x.device), positions)
