"""Steering hooks: builders that return ``[(hook_name, fn)]`` for ``with model.hooks(fwd_hooks=...)``.

Every builder is pure (its vector or feature set comes in as arguments) and returns a list of TransformerLens
forward hooks; apply them only through ``model.hooks(...)`` (or the ``fwd_hooks`` argument of
``steerlab.evaluate``), which removes them on exit, so a failed cell never leaves a model steered.

Positions
---------
``positions`` chooses where an edit applies, in absolute token positions of the sequence (``<bos>`` = 0) with
the prompt of length ``L`` (``<bos>`` included):

* ``"all"``                   every position;
* ``"last_prompt"``           position ``L - 1`` only (SPARE: the residual that predicts the first answer token);
* ``"generated"``             every generated token, positions ``>= L``;
* ``"last_prompt+generated"`` positions ``>= L - 1``: every position whose output is sampled.

During cached generation (``use_past_kv_cache=True``) a forward pass sees the prompt once and then one new
position per step, so a hook cannot read absolute positions off its input. Each builder therefore adds a
:class:`PositionTracker` on ``blocks.0.hook_resid_pre`` (the first hook every forward pass runs: TL 3.9's
``generate`` embeds tokens itself and skips ``hook_embed``) that works out, for the pass in progress, its first
absolute position and the prompt length:

* a pass of one token that follows an earlier pass is a cached generation step (it extends the sequence);
* a pass of ``n > 1`` tokens whose first ``n - 1`` input vectors equal the previous pass is an uncached
  generation step (same prompt, one more token); any other pass starts a new prompt of length ``L = n``.

So steering with and without the KV cache edits the same positions (``tests/test_hooks.py`` compares the
generations). A one-token prompt (``<bos>`` alone) cannot be told apart from a cached step: not supported.

Which SAE vectors S are
-----------------------
* **Reading** a feature (how much of feature ``c`` is in ``x``) uses the *encoder*, with both biases:
  ``z_c(x) = ReLU((x - b_dec) @ W_enc[:, c] + b_enc[c])`` (before any top-k cut, see
  ``steerlab.sae.encode_pre_topk``). The encoder is what the SAE trained to detect the feature with; the
  decoder directions are not orthogonal, so ``x @ W_dec[c]`` mixes in every correlated feature.
  For a TopK SAE a second reading is offered, ``read="code"``: the SAE's own sparse code ``sae.encode(x)``,
  zero for every feature outside the input's top ``k``. It is more selective (a feature that the SAE does not
  use for an input is not amplified there) and weaker (an input whose trace of the feature stays below the
  cut is never pushed over it). Notebook 03 sweeps both for the jailbreak defence.
* **Writing** a feature uses its *decoder row* ``W_dec[c]`` (no bias): adding ``delta * W_dec[c]`` changes
  the SAE reconstruction by exactly ``delta`` units of feature ``c``, which is what SPARE and Wu et al. edit.

With these conventions amplification ``X' = X + alpha ReLU(X S) S^T`` reads ``ReLU(X S)`` as ``z_S(X)`` and
writes with ``W_dec[S]``; calibration ``X' = X - ReLU(X S) S^T + beta mean(S)`` removes ``z_S(X) W_dec[S]``
and adds ``beta`` times the mean decoder row of ``S``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

POSITIONS = ("all", "last_prompt", "generated", "last_prompt+generated")
READS = ("encoder", "code")  # how z_S(x) is read: encoder before the top-k cut, or the SAE's sparse code

Hook = tuple[str, Callable]
TRACK_HOOK = "blocks.0.hook_resid_pre"  # runs first in every forward pass, generate() included


class PositionTracker:
    """Hook on :data:`TRACK_HOOK` that records, for the forward pass in progress, ``offset`` (absolute position of
    its first token) and ``prompt_len`` (``L``). See the module docstring for the rule."""

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_len = 0
        self._prev: Tensor | None = None  # block-0 inputs of the last full pass [batch pos d_model]
        self._total = 0  # sequence length after the last pass

    def reset(self) -> None:
        self.__init__()

    def __call__(self, embed: Float[Tensor, "batch pos d_model"], hook=None) -> None:
        # returns None: TransformerLens keeps the activation unchanged
        n = embed.shape[1]
        prev = self._prev
        if n == 1 and prev is not None and self._total > 0:
            self.offset = self._total  # cached step: one new position after the sequence so far
        else:
            continues = (prev is not None and prev.shape[0] == embed.shape[0] and prev.shape[1] == n - 1
                         and torch.equal(embed[:, :-1], prev))
            if not continues:
                self.prompt_len = n
            self.offset = 0
            self._prev = embed.detach()
        self._total = self.offset + n

    def span(self, positions: str, n: int) -> tuple[int, int]:
        """``(start, stop)`` indices, within the ``n`` positions of the pass in progress, that ``positions``
        selects (every position set is one contiguous run)."""
        L, off = self.prompt_len, self.offset
        first = {"all": off, "last_prompt": L - 1, "generated": L, "last_prompt+generated": L - 1}[positions]
        last = L if positions == "last_prompt" else off + n  # exclusive, absolute
        return min(max(first - off, 0), n), min(max(last - off, 0), n)

    def mask(self, positions: str, n: int, device=None) -> Tensor:
        """Boolean mask over the ``n`` positions of the pass in progress: which ones ``positions`` selects."""
        a, b = self.span(positions, n)
        m = torch.zeros(n, dtype=torch.bool, device=device)
        m[a:b] = True
        return m


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS} (got {positions!r})")
    return positions


def edit_hook(hook_name: str, edit: Callable[[Tensor], Tensor], positions: str = "all") -> list[Hook]:
    """The general builder: ``edit`` maps the selected residual vectors ``[batch, n_selected, d_model]`` to
    their replacements; every other position is left as is. Returns the tracker hook and the editing hook."""
    check_positions(positions)
    tracker = PositionTracker()

    def fn(x: Float[Tensor, "batch pos d_model"], hook=None) -> Tensor:
        a, b = tracker.span(positions, x.shape[1])
        if a >= b:
            return x
        x = x.clone()  # never edit in place: the input may be needed for a backward pass
        x[:, a:b] = edit(x[:, a:b]).to(x.dtype)
        return x

    return [(TRACK_HOOK, tracker), (hook_name, fn)]


def add_vector(hook_name: str, vector: Float[Tensor, "*batch d_model"], coeff: float = 1.0,
               positions: str = "all") -> list[Hook]:
    """ActAdd / mean-difference steering: ``x' = x + coeff * vector`` at the selected positions (``vector``
    is ``[d_model]``, or ``[batch, 1, d_model]`` for one vector per sequence of a single batch)."""
    v = vector.detach().float()
    return edit_hook(hook_name, lambda x: x + coeff * v.to(x.device), positions)


def _decoder_rows(sae, features: Sequence[int]) -> Float[Tensor, "n_feat d_model"]:
    if len(features) == 0:
        raise ValueError("the feature set S is empty: pick at least one feature")
    return sae.W_dec.detach()[list(features)].float()


def feature_reader(sae, features: Sequence[int], read: str = "encoder"
                   ) -> Callable[[Tensor], Float[Tensor, "... n_feat"]]:
    """``x -> z_S(x)`` for ``features``: the encoder activations before any top-k cut (``read="encoder"``) or the
    SAE's own sparse code (``read="code"``), as in the module docstring. ``read`` is checked here, once, so a
    hook built from the reader does no checking per forward pass."""
    from steerlab.core.activations import encode_pre_topk

    if read not in READS:
        raise ValueError(f"read must be one of {READS} (got {read!r})")
    idx = list(features)
    encode = encode_pre_topk if read == "encoder" else (lambda s, x: s.encode(x))
    return lambda x: encode(sae, x.float())[..., idx]


def read_features(sae, x: Float[Tensor, "... d_model"], features: Sequence[int], read: str = "encoder"
                  ) -> Float[Tensor, "... n_feat"]:
    """``z_S(x)`` once (see :func:`feature_reader`)."""
    return feature_reader(sae, features, read)(x)


def amplify(hook_name: str, sae, features: Sequence[int], alpha: float, positions: str = "all",
            read: str = "encoder") -> list[Hook]:
    """Wu et al. amplification ``X' = X + alpha ReLU(X S) S^T`` (read: ``read``, write: decoder rows)."""
    W = _decoder_rows(sae, features)
    z = feature_reader(sae, features, read)
    return edit_hook(hook_name, lambda x: x + alpha * z(x) @ W, positions)


def calibrate(hook_name: str, sae, features: Sequence[int], beta: float, positions: str = "all",
              read: str = "encoder") -> list[Hook]:
    """Wu et al. calibration ``X' = X - ReLU(X S) S^T + beta * mean(S)``: remove what the input holds of S
    (read as ``read``), then add a fixed amount ``beta`` of the mean decoder row of S."""
    W = _decoder_rows(sae, features)
    z, s_bar = feature_reader(sae, features, read), W.mean(0)
    return edit_hook(hook_name, lambda x: x - z(x) @ W + beta * s_bar, positions)


def clamp(hook_name: str, sae, features: Sequence[int], value: float, positions: str = "all") -> list[Hook]:
    """Clamp features to ``value``: ``x' = x + (value - z_S(x)) W_dec[S]`` (exact where the feature is active)."""
    W = _decoder_rows(sae, features)
    z = feature_reader(sae, features)
    return edit_hook(hook_name, lambda x: x + (value - z(x)) @ W, positions)
