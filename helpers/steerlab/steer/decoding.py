"""Decoding-time steering: context-aware decoding (CAD) and in-context demonstrations (ICL), and the greedy decoder
both use.

* :func:`greedy` is a plain greedy decoder (KV cache on by default) that unembeds the last position only: on a
  model with a large vocabulary (Gemma's 262k tokens) the unembedding of every position dominates a forward
  pass, and TransformerLens' ``generate`` was measured far slower (8 Gemma conflict prompts, 6 tokens: 69 s on
  one busy core). :class:`steerlab.core.hooks.PositionTracker` recognises cached and uncached steps, so position
  rules (``last_prompt``, ``generated``) edit the same positions as under ``core.run.complete`` (tested).
* CAD (Shi et al. 2024), on multi-token answers: at every generated step the next-token logits with the context
  ``l(y | ctx, q, y_<t)`` and without it ``l(y | q, y_<t)`` are contrasted, ``(1 + a) l_ctx - a l_free``, and
  the chosen token is appended to BOTH sequences (the authors' ``generate`` does the same). ``a > 0`` steers
  toward the context, ``a = -1`` gives the context-free (closed-book) answer.
* ICL: demonstrations (prompt, wanted answer) are put before the query, joined by a separator.

Examples are duck-typed (``prompt``, ``max_new_tokens``); ``max_new_tokens == 0`` reads one token.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.core import run
from steerlab.core.hooks import check_hooks, check_strength


def last_logits(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only (the blocks run on every position; ``ln_final`` and the unembedding on
    the last). Hooks in ``model.hooks(...)`` apply."""
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)[:, -1:]
    return model.unembed(model.ln_final(resid))[:, -1].float()


def _steps(example) -> int:
    return max(int(getattr(example, "max_new_tokens", 0)), 1)


class _Branch:
    """One sequence batch being decoded, with its KV cache (``use_cache``) or its whole token sequence."""

    def __init__(self, model, tokens: Int[Tensor, "batch pos"], use_cache: bool,
                 mask: Int[Tensor, "batch pos"] | None = None) -> None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        self.model, self.seq, self.mask = model, tokens, mask
        self.cache = (TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
                      if use_cache else None)
        self.fed = 0  # positions already in the cache

    def logits(self) -> Float[Tensor, "batch d_vocab"]:
        if self.cache is None:
            return last_logits(self.model, self.seq)
        new = self.seq[:, self.fed:]
        mask = self.mask if self.fed == 0 and self.mask is not None else torch.ones_like(new)
        self.fed = self.seq.shape[1]
        resid = self.model(new, past_kv_cache=self.cache, attention_mask=mask,
                           stop_at_layer=self.model.cfg.n_layers)[:, -1:]
        return self.model.unembed(self.model.ln_final(resid))[:, -1].float()

    def append(self, nxt: Int[Tensor, "batch 1"]) -> None:
        self.seq = torch.cat([self.seq, nxt], 1)


def padded(model, prompts: Sequence[str], extra: int = 0) -> tuple[Tensor, Tensor]:
    """``(tokens, mask)``: the prompts' tokens (each with its ``<bos>``) left-padded to one length, and the attention
    mask (0 on padding). With left padding every prompt's last token sits at the last position."""
    rows = [run.to_tokens(model, p, extra)[0] for p in prompts]
    n = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, n - len(r):], mask[i, n - len(r):] = r, 1
    return tokens, mask


def pads_batches(model) -> bool:
    """Whether prompts of different lengths share a left-padded batch: for rotary models, whose positions
    TransformerLens offsets by the attention mask (tinyworld's absolute positions keep unpadded batches)."""
    return getattr(model.cfg, "positional_embedding_type", "") == "rotary"


def _done(model, gen: list[list[int]], eos) -> bool:
    """Every row has ended: EOS, or a line break after some text (answers are read up to the first line break)."""
    for row in gen:
        if eos is not None and eos in row:
            continue
        text = run.decode(model, row)
        if "\n" not in text.lstrip():
            return False
    return True


@torch.no_grad()
def greedy(model, examples: Sequence, fwd_hooks=(), free_prompt: Callable | None = None, a: float = 0.0,
           batch_size: int = 64, use_cache: bool = True) -> list[str]:
    """Greedy answers (decoded, up to EOS) for ``examples``; with ``free_prompt`` (example -> context-free prompt)
    and ``a != 0``, each step picks ``argmax (1 + a) l(prompt) - a l(free_prompt)`` (CAD). ``fwd_hooks`` apply
    to every forward pass of the prompt branch. Decoding of a batch stops early once every row has ended (EOS,
    or a line break after some text: ``steerlab.core.text.answer_span`` reads no further). Rotary models batch
    prompts of any length, left-padded (:func:`pads_batches`); others batch prompts of one token length."""
    fwd_hooks, a = check_hooks(model, fwd_hooks), check_strength(a, "a")
    eos = model.tokenizer.eos_token_id
    out = [""] * len(examples)
    cad = free_prompt is not None and a != 0.0
    pad = use_cache and pads_batches(model)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        key = (0 if pad else run.to_tokens(model, e.prompt, _steps(e)).shape[1], _steps(e),
               run.to_tokens(model, free_prompt(e)).shape[1] if cad and not pad else 0)
        groups[key].append(i)

    def branch(prompts: list[str], n_new: int) -> _Branch:
        if pad:
            tokens, mask = padded(model, prompts, n_new)
            return _Branch(model, tokens, use_cache, mask)
        return _Branch(model, run.to_tokens(model, prompts, n_new), use_cache)

    for (_, n_new, _), idx_all in groups.items():
        for s in range(0, len(idx_all), batch_size):
            idx = idx_all[s: s + batch_size]
            main = branch([examples[i].prompt for i in idx], n_new)
            free = branch([free_prompt(examples[i]) for i in idx], n_new) if cad else None
            gen = torch.empty(len(idx), 0, dtype=torch.long)
            for _ in range(n_new):
                with model.hooks(fwd_hooks=list(fwd_hooks)):
                    logits = main.logits()
                if cad:
                    logits = (1 + a) * logits - a * free.logits()
                nxt = logits.argmax(-1, keepdim=True)
                main.append(nxt)
                if cad:
                    free.append(nxt)
                gen = torch.cat([gen, nxt], 1)
                if _done(model, gen.tolist(), eos):
                    break
            for row, i in zip(gen.tolist(), idx):
                out[i] = run.decode(model, row[: row.index(eos)] if eos in row else row)
    return out


def cad(model, examples: Sequence, free_prompt: Callable, a: float) -> list[str]:
    """Context-aware decoding with strength ``a`` (see the module docstring)."""
    return greedy(model, examples, free_prompt=free_prompt, a=a)


def with_demos(examples: Sequence, demos: Sequence[tuple[str, str]], separator: str) -> list:
    """Copies of ``examples`` whose prompt is preceded by the demonstrations ``(prompt, answer)``, each written
    ``prompt + " " + answer`` and joined by ``separator``."""
    import dataclasses

    prefix = "".join(f"{p} {a}{separator}" for p, a in demos)
    return [dataclasses.replace(e, prompt=prefix + e.prompt) for e in examples]


def icl(model, examples: Sequence, demos: Sequence[tuple[str, str]], separator: str, fwd_hooks=()) -> list[str]:
    """In-context demonstrations before each query, then greedy answers."""
    return greedy(model, with_demos(examples, demos, separator), fwd_hooks)
