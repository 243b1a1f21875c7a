"""Running a model on prompts: batched last-token logits, next-token answers, greedy completions.

Prompts are grouped by token length so every batch is unpadded (tinyworld uses absolute positions, and
TransformerLens generation with left padding would shift them). Hooks passed as ``fwd_hooks`` are applied
inside ``model.hooks(...)``, so they are removed even when a call fails.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer


def to_tokens(model: HookedTransformer, prompts: str | Sequence[str], extra: int = 0) -> Tensor:
    """``model.to_tokens`` that never truncates silently: a prompt whose tokens (plus ``extra`` tokens to be
    generated) exceed the model's context ``n_ctx`` is an error that names it and its length."""
    single = isinstance(prompts, str)
    batch = [prompts] if single else list(prompts)
    for p in batch:
        n = len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1  # + BOS
        if n + extra > model.cfg.n_ctx:
            raise ValueError(f"a prompt of {n} tokens{f' plus {extra} to generate' if extra else ''} exceeds the "
                             f"model's context of {model.cfg.n_ctx} tokens: shorten it (fewer demonstrations) or "
                             f"use a model with a longer context. The prompt begins {p[:80]!r}")
    return model.to_tokens(batch, truncate=False)


def decode(model: HookedTransformer, ids: Sequence[int]) -> str:
    """Token ids as the tokenizer decodes them (spaces kept: subword tokenizers join pieces, tinyworld's
    word-level tokenizer joins words with spaces)."""
    return model.tokenizer.decode(list(ids))


def _groups_by_length(model: HookedTransformer, prompts: Sequence[str], extra: int = 0) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[to_tokens(model, p, extra).shape[1]].append(i)
    return groups


@torch.no_grad()
def last_token_logits(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=(), batch_size: int = 256
                      ) -> Float[Tensor, "batch d_vocab"]:
    """Logits of the token after each prompt (the prompt's last position), in prompt order."""
    out = torch.empty(len(prompts), model.cfg.d_vocab)
    for _, idx in _groups_by_length(model, prompts).items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            tokens = to_tokens(model, [prompts[i] for i in chunk])
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                logits = model(tokens)[:, -1]
            out[chunk] = logits.float().cpu()
    return out


def next_words(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=()) -> list[str]:
    """The greedy next token after each prompt, decoded (a word for tinyworld, a subword piece with its
    leading space for a subword tokenizer)."""
    ids = last_token_logits(model, prompts, fwd_hooks).argmax(-1)
    return [decode(model, [int(i)]) for i in ids]


@torch.no_grad()
def complete(model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 16, fwd_hooks=(),
             use_cache: bool = True, batch_size: int = 256) -> list[str]:
    """Greedy completions (the generated text only, decoded, up to the EOS token), in prompt order.

    Uses ``HookedTransformer.generate``; with ``use_cache`` the KV cache is on and each hook sees one
    position per generated token, so hooks must steer every position they are given.
    """
    out: list[str] = [""] * len(prompts)
    eos = model.tokenizer.eos_token_id
    for length, idx in _groups_by_length(model, prompts, max_new_tokens).items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            tokens = to_tokens(model, [prompts[i] for i in chunk], max_new_tokens)
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                gen = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=True,
                                     eos_token_id=eos, use_past_kv_cache=use_cache, verbose=False)
            for row, i in zip(gen[:, length:].tolist(), chunk):
                out[i] = decode(model, row[: row.index(eos)] if eos in row else row)
    return out


def answer(model: HookedTransformer, examples: Sequence, fwd_hooks=(), use_cache: bool = True) -> list[str]:
    """The model's answer to each example: the next token for ``max_new_tokens == 0``, else a greedy completion
    of ``example.max_new_tokens`` tokens (examples are duck-typed: ``prompt`` and ``max_new_tokens``)."""
    out: list[str] = [""] * len(examples)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_len[int(getattr(ex, "max_new_tokens", 0))].append(i)
    for n_new, idx in by_len.items():
        prompts = [examples[i].prompt for i in idx]
        if n_new:
            res = complete(model, prompts, n_new, fwd_hooks, use_cache)
        else:
            res = next_words(model, prompts, fwd_hooks)
        for i, r in zip(idx, res):
            out[i] = r
    return out


def accuracy(model: HookedTransformer, examples: Sequence, fwd_hooks=()) -> float:
    """Share of examples answered correctly (by each example's ``score``)."""
    if not examples:
        return float("nan")
    answers = answer(model, examples, fwd_hooks)
    return sum(bool(e.score(a)) for e, a in zip(examples, answers)) / len(examples)
