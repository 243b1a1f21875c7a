"""Running a model on prompts: batched last-token logits, next-token answers, greedy completions.

Batches: a model with rotary positions (Gemma) takes prompts of any lengths in one batch, left-padded, so every
prompt ends at the batch's last position (steering at ``last_prompt`` and at generated positions follows the
padding; greedy tokens equal those of unpadded one-prompt runs, tested). A model with absolute positions
(tinyworld) would see its positions shifted by left padding, so its prompts are grouped by token length and every
batch is unpadded. Hooks passed as ``fwd_hooks`` are applied inside ``model.hooks(...)``, so they are removed
even when a call fails.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from steerlab.core.hooks import check_hooks, special_tokens_at


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
    """Prompt indices grouped by token length (for code that needs unpadded batches)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[to_tokens(model, p, extra).shape[1]].append(i)
    return groups


def special_mask(model: HookedTransformer, tokens: Tensor) -> Tensor:
    """``[batch, pos]`` True where ``tokens`` hold ``<bos>`` or padding (what :func:`steerlab.core.hooks.
    special_tokens_at` announces to hooks such as an SAE splice)."""
    tok = model.tokenizer
    ids = [i for i in (tok.bos_token_id, tok.pad_token_id) if i is not None]
    return torch.isin(tokens.cpu(), torch.tensor(ids, dtype=tokens.dtype))


def pads_left(model: HookedTransformer) -> bool:
    """Whether prompts of different lengths may share a left-padded batch (rotary positions do not shift)."""
    return model.cfg.positional_embedding_type == "rotary"


def batches(model: HookedTransformer, prompts: Sequence[str], batch_size: int, extra: int = 0
            ) -> list[tuple[list[int], Tensor]]:
    """``[(prompt indices, tokens [batch, pos])]`` covering every prompt once: left-padded batches of similar
    lengths for a rotary model, unpadded batches of equal length otherwise (see the module docstring)."""
    lengths = [to_tokens(model, p, extra).shape[1] for p in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[0 if pads_left(model) else n].append(i)
    out = []
    for idx in groups.values():
        idx = sorted(idx, key=lambda i: lengths[i])
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            out.append((chunk, model.to_tokens([prompts[i] for i in chunk], padding_side="left", truncate=False)))
    return out


@torch.no_grad()
def last_token_logits(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=(), batch_size: int = 256
                      ) -> Float[Tensor, "batch d_vocab"]:
    """Logits of the token after each prompt (the prompt's last position), in prompt order."""
    fwd_hooks = check_hooks(model, fwd_hooks)
    out = torch.empty(len(prompts), model.cfg.d_vocab)
    for chunk, tokens in batches(model, prompts, batch_size):
        with special_tokens_at(special_mask(model, tokens)), model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = model(tokens, padding_side="left")[:, -1]
        out[chunk] = logits.float().cpu()
    return out


def next_words(model: HookedTransformer, prompts: Sequence[str], fwd_hooks=()) -> list[str]:
    """The greedy next token after each prompt, decoded (a word for tinyworld, a subword piece with its
    leading space for a subword tokenizer)."""
    ids = last_token_logits(model, prompts, fwd_hooks).argmax(-1)
    return [decode(model, [int(i)]) for i in ids]


def _keep_last(x: Tensor, hook) -> Tensor:
    return x[:, -1:]


def _last_position_only(model: HookedTransformer) -> list:
    """A hook that hands the unembedding the last position only (``ln_final.hook_normalized``): ``generate``
    reads nothing but ``logits[:, -1]``, and on the first step, over the whole prompt, the unembedding of every
    position would cost as much as a dozen generation steps on a 262k-token vocabulary. It runs after the
    user's hooks, which see every position as before."""
    ln = getattr(model, "ln_final", None)
    return [("ln_final.hook_normalized", _keep_last)] if hasattr(ln, "hook_normalized") else []


@torch.no_grad()
def complete_ids(model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 16, fwd_hooks=(),
                 use_cache: bool = True, batch_size: int = 256, stop_at_eos: bool = True) -> list[list[int]]:
    """Greedy completions as token ids (the generated tokens only, up to the EOS token), in prompt order.

    Uses ``HookedTransformer.generate``; with ``use_cache`` the KV cache is on and each hook sees one
    position per generated token, so hooks must steer every position they are given.
    """
    fwd_hooks = check_hooks(model, fwd_hooks)
    out: list[list[int]] = [[] for _ in prompts]
    eos = model.tokenizer.eos_token_id
    for chunk, tokens in batches(model, prompts, batch_size, max_new_tokens):
        with special_tokens_at(special_mask(model, tokens)), \
                model.hooks(fwd_hooks=[*fwd_hooks, *_last_position_only(model)]):
            gen = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=stop_at_eos,
                                 eos_token_id=eos, use_past_kv_cache=use_cache, verbose=False,
                                 padding_side="left")
        for row, i in zip(gen[:, tokens.shape[1]:].tolist(), chunk):
            out[i] = row[: row.index(eos)] if stop_at_eos and eos in row else row
    return out


def complete(model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 16, fwd_hooks=(),
             use_cache: bool = True, batch_size: int = 256, stop_at_eos: bool = True) -> list[str]:
    """Greedy completions (the generated text only, decoded, up to the EOS token), in prompt order
    (:func:`complete_ids`, decoded)."""
    ids = complete_ids(model, prompts, max_new_tokens, fwd_hooks, use_cache, batch_size, stop_at_eos)
    return [decode(model, row) for row in ids]


@torch.no_grad()
def continuation_logprob(model: HookedTransformer, prompts: Sequence[str], continuations: Sequence[Sequence[int]],
                         batch_size: int = 32) -> Float[Tensor, " batch"]:
    """Mean ``log p(token | prompt, earlier tokens)`` per continuation token (ids, e.g. :func:`complete_ids`)
    under ``model`` as it is (no hooks), teacher-forced; NaN for an empty continuation. A steered generation's
    fluency, scored by the unsteered model. Sequences are right-padded into batches: a causal model's logits at
    a position never see the padding after it."""
    out = torch.full((len(prompts),), float("nan"))
    rows = [(i, to_tokens(model, [p])[0].tolist(), list(c)) for i, (p, c) in enumerate(zip(prompts, continuations))
            if len(c)]
    pad = model.tokenizer.pad_token_id or 0
    longest = max((len(p) + len(c) for _, p, c in rows), default=1)
    batch_size = max(1, min(batch_size, int(2e8 // (longest * model.cfg.d_vocab))))  # logits under ~800 MB
    for s in range(0, len(rows), batch_size):
        chunk = rows[s: s + batch_size]
        width = max(len(p) + len(c) for _, p, c in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for j, (_, p, c) in enumerate(chunk):
            tokens[j, : len(p) + len(c)] = torch.tensor(p + c)
        logp = model(tokens.to(model.cfg.device)).float().log_softmax(-1).cpu()
        for j, (i, p, c) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            out[i] = logp[j, pos, torch.tensor(c)].mean()
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


@torch.no_grad()
def sequence_nll(model: HookedTransformer, texts: Sequence[str], batch_size: int = 16, pos_chunk: int = 128
                 ) -> Float[Tensor, " batch"]:
    """Mean NLL per text over every token after ``<bos>``, teacher-forced: what Hugging Face's
    ``model(input_ids, labels=input_ids).loss`` returns for one text (``T`` tokens with ``<bos>``: the mean of
    ``-log p(t_i | t_<i)`` for ``i = 1 .. T-1``). Texts are batched by token length (never padded); the final
    norm and unembedding run on ``pos_chunk`` positions at a time, so a long text on a large vocabulary does not
    hold all its logits at once."""
    out = torch.empty(len(texts))
    for _, idx in _groups_by_length(model, texts).items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s: s + batch_size]
            tokens = to_tokens(model, [texts[i] for i in chunk])
            resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model], before ln_final
            total = torch.zeros(len(chunk))
            for a in range(0, tokens.shape[1] - 1, pos_chunk):
                b = min(a + pos_chunk, tokens.shape[1] - 1)
                logp = model.unembed(model.ln_final(resid[:, a:b])).float().log_softmax(-1)
                total += -logp.gather(-1, tokens[:, a + 1: b + 1, None])[..., 0].sum(-1).cpu()
            out[chunk] = total / max(tokens.shape[1] - 1, 1)
    return out


def accuracy(model: HookedTransformer, examples: Sequence, fwd_hooks=()) -> float:
    """Share of examples answered correctly (by each example's ``score``)."""
    if not examples:
        return float("nan")
    answers = answer(model, examples, fwd_hooks)
    return sum(bool(e.score(a)) for e, a in zip(examples, answers)) / len(examples)
