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

Feature edits read and written through an SAE (amplify, calibrate, clamp, add) live in
:mod:`steerlab.steer.features`; every steering method is listed in :mod:`steerlab.steer.registry`.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

def hook_name_for(layer: int) -> str:
    """The residual-stream hook (TransformerLens name) an SAE or a policy of ``layer`` reads and writes."""
    return f"blocks.{int(layer)}.hook_resid_post"


POSITIONS = ("all", "last_prompt", "generated", "last_prompt+generated")

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
