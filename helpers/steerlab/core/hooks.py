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

Checks
------
What a steering call takes is checked here, once, by every entry point: :func:`check_hook_names` (a hook the
model lacks is an error naming it and the closest names it has, not TransformerLens's bare ``KeyError``),
:func:`check_strength` (NaN and inf are errors naming the parameter; a negative strength is legal) and
:func:`check_features` (SAE feature ids are integers in ``[0, d_sae)``).
"""

from __future__ import annotations

import contextvars
import difflib
import math
import operator
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

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


_SPECIAL: contextvars.ContextVar[Tensor | None] = contextvars.ContextVar("steerlab_special_positions", default=None)


@contextmanager
def special_tokens_at(mask: Tensor | None) -> Iterator[None]:
    """While steerlab's own run functions (:mod:`steerlab.core.run`) run a batch, ``mask`` (``[batch, prompt
    positions]``, True at ``<bos>`` and padding) tells hooks where the prompt's special tokens are: on a left-padded
    batch ``<bos>`` is not at position 0. Read with :func:`special_positions`."""
    token = _SPECIAL.set(mask)
    try:
        yield
    finally:
        _SPECIAL.reset(token)


def special_positions(n: int) -> Tensor | None:
    """``[batch, n]`` True at the ``<bos>`` / padding positions of the pass in progress when a steerlab run
    function announced them (:func:`special_tokens_at`): the prompt pass, or an uncached pass over the prompt and
    the tokens generated so far (never special). ``None`` when unknown: a KV-cached step (``n`` = 1), or a call from
    outside steerlab's run functions."""
    mask = _SPECIAL.get()
    if mask is None or n == 1 or n < mask.shape[1]:
        return None
    return torch.cat([mask, mask.new_zeros(mask.shape[0], n - mask.shape[1])], dim=1)


class HookNameError(ValueError, KeyError):
    """A hook name the model does not have (a ``ValueError``, and a ``KeyError`` as TransformerLens raises)."""

    __str__ = ValueError.__str__  # the message as written, not KeyError's repr of it


def check_hook_names(model, names: Iterable[str]) -> None:
    """Raise :class:`HookNameError` for the first of ``names`` that ``model`` has no hook point for, naming it,
    the closest names the model has (difflib) and its layer range."""
    for name in names:
        if name in model.hook_dict:
            continue
        close = difflib.get_close_matches(str(name), list(model.hook_dict), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise HookNameError(f"the model has no hook {name!r}: {hint}its layers are 0..{model.cfg.n_layers - 1} and "
                            "its hook names are those of model.hook_dict (TransformerLens names such as "
                            "'blocks.0.hook_resid_post')")


def check_hooks(model, fwd_hooks: Iterable[Hook]) -> list[Hook]:
    """``fwd_hooks`` as a list, after :func:`check_hook_names` on their names (call before ``model.hooks``; a
    name filter given as a callable, which TransformerLens also takes, is not checked)."""
    fwd_hooks = list(fwd_hooks)
    check_hook_names(model, [name for name, _ in fwd_hooks if isinstance(name, str)])
    return fwd_hooks


def check_strength(value, name: str = "strength") -> float:
    """``value`` as a float; NaN, inf and non-numbers are a ``ValueError`` naming the parameter ``name``.

    A negative strength is legal: every edit is linear in it, so it steers the other way (see each builder)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number (got {value!r})") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r}: a steering strength must be finite (NaN or inf turns every "
                         f"logit into NaN); pass a finite {name}")
    return v


def check_features(features: Sequence, d_sae: int, name: str = "features") -> list[int]:
    """``features`` as a list of ints; an id that is not an integer (``2.7``, ``True``) or lies outside
    ``[0, d_sae)`` (``-1`` would silently index from the end) is a ``ValueError`` naming it and the range."""
    out = []
    for i, f in enumerate(features):
        try:
            if isinstance(f, bool) or (isinstance(f, Tensor) and f.dtype == torch.bool):
                raise TypeError
            c = operator.index(f)
        except TypeError:
            c = None
        if c is None or not 0 <= c < d_sae:
            what = "is not an integer" if c is None else "is out of range"
            raise ValueError(f"feature id {f!r} ({name}[{i}]) {what}: feature ids of this SAE are integers in "
                             f"[0, {d_sae}) (d_sae={d_sae})")
        out.append(c)
    return out


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
    is ``[d_model]``, or ``[batch, 1, d_model]`` for one vector per sequence of a single batch).

    ``coeff`` must be finite (NaN/inf: ``ValueError`` naming ``coeff``), and so must ``vector``; a negative
    ``coeff`` is legal and subtracts the vector (steers away from its direction); ``0`` is the unsteered model."""
    coeff = check_strength(coeff, "coeff")
    v = vector.detach().float()
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"the steering vector for {hook_name!r} holds NaN or inf: fit it again on finite "
                         "activations")
    return edit_hook(hook_name, lambda x: x + coeff * v.to(x.device), positions)
