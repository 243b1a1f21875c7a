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



def _groups_by_length(model: HookedTransformer, prompts: Sequence[str]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[model.to_tokens(p).shape[1]].append(i)
    return groups


@torch.no_grad()
def last_token_logits(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=(), batch_size: int = 256
                      ) -> Float[Tensor, "batch d_vocab"]:
    """Logits of the token after each prompt (the prompt's last position), in prompt order."""
    out = torch.empty(len(prompts), model.cfg.d_vocab)
    for _, idx in _groups_by_length(model, prompts).items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            tokens = model.to_tokens([prompts[i] for i in chunk])
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                logits = model(tokens)[:, -1]
            out[chunk] = logits.float().cpu()
    return out


def next_words(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=()) -> list[str]:
    """The greedy next word after each prompt."""
    ids = last_token_logits(model, prompts, fwd_hooks).argmax(-1)
    return [model.tokenizer.convert_ids_to_tokens(int(i)) for i in ids]


@torch.no_grad()
def complete(model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 16, fwd_hooks=(),
             use_cache: bool = True, batch_size: int = 256) -> list[str]:
    """Greedy completions (the generated words only, up to ``<eos>``), in prompt order.

    Uses ``HookedTransformer.generate``; with ``use_cache`` the KV cache is on and each hook sees one
    position per generated token, so hooks must steer every position they are given.
    """
    out: list[str] = [""] * len(prompts)
    eos = model.tokenizer.eos_token_id
    for length, idx in _groups_by_length(model, prompts).items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            tokens = model.to_tokens([prompts[i] for i in chunk])
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                gen = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=True,
                                     eos_token_id=eos, use_past_kv_cache=use_cache, verbose=False)
            for row, i in zip(gen[:, length:].tolist(), chunk):
                words = []
                for t in row:
                    if t == eos:
                        break
                    words.append(model.tokenizer.convert_ids_to_tokens(t))
                out[i] = " ".join(words)
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
