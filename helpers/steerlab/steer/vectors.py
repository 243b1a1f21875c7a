"""Steering vectors added to the residual stream: ActAdd, mean difference, and a learned vector.

* ActAdd (Turner et al. 2023): the residual difference of ONE prompt pair at one position,
  ``v = h(positive) - h(negative)``; the caller chooses the pair.
* Mean difference (contrastive activation addition / task vectors): ``v = mean(h | y=1) - mean(h | y=0)``.
* Learned: the single vector ``v`` that, added at the last prompt position, maximises the mean log-likelihood
  of wanted answers (all answer tokens, teacher-forced); not a published method but a ceiling for every additive
  last-position edit.

Each is applied by :func:`steerlab.core.hooks.add_vector` (``x' = x + coeff v`` at the chosen positions); the
registry (:mod:`steerlab.steer.registry`) wraps them. Examples are duck-typed (``prompt``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlab.core import hooks
from steerlab.core import run


def mean_difference(hidden: Float[Tensor, "batch d_model"], y) -> Float[Tensor, " d_model"]:
    """``mean(h | y=1) - mean(h | y=0)``."""
    y = torch.as_tensor(y).bool()
    if y.all() or not y.any():
        raise ValueError("mean difference needs rows of both groups (y = 0 and y = 1)")
    return hidden[y].mean(0) - hidden[~y].mean(0)


@torch.no_grad()
def hidden_states(model, prompts: Sequence[str], hook_names: Sequence[str], position: int = -1
                  ) -> dict[str, Float[Tensor, "batch d_model"]]:
    """Residual stream at ``position`` (default: the last prompt position) for each hook name, in prompt order.
    Prompts are grouped by token length, so no batch is padded and ``-1`` is every prompt's last token."""
    hooks.check_hook_names(model, hook_names)
    out = {h: torch.empty(len(prompts), model.cfg.d_model) for h in hook_names}
    stop = max(int(h.split(".")[1]) for h in hook_names) + 1
    for _, idx in run._groups_by_length(model, prompts).items():
        tokens = model.to_tokens([prompts[i] for i in idx])
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in out, stop_at_layer=stop)
        for h in out:
            out[h][idx] = cache[h][:, position].float().cpu()
    return out


def actadd_vector(model, hook_name: str, positive: str, negative: str) -> Float[Tensor, " d_model"]:
    """ActAdd's vector: last-position residual of ``positive`` minus that of ``negative`` at ``hook_name``."""
    h = hidden_states(model, [positive, negative], [hook_name])[hook_name]
    return h[0] - h[1]


def answer_tokens(model, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """``(prompt_ids, answer_ids)``: the tokens of ``prompt`` (with ``<bos>``) and of ``" " + answer`` as the
    tokenizer splits ``prompt + " " + answer`` (the answer's tokens in running text, however many)."""
    p = model.to_tokens(prompt)[0].tolist()
    full = model.to_tokens(prompt + " " + answer)[0].tolist()
    if full[: len(p)] == p and len(full) > len(p):
        return p, full[len(p):]
    return p, model.to_tokens(" " + answer, prepend_bos=False)[0].tolist()


def _answer_logits(model, seq: Tensor, lp: int, la: int) -> Tensor:
    """Logits at the ``la`` positions that predict the answer tokens (``lp - 1`` ... ``lp + la - 2``): the blocks run
    on the whole sequence, the final norm and the unembedding only there (Gemma's 262k-token unembedding of every
    position would dominate the pass)."""
    resid = model(seq, stop_at_layer=model.cfg.n_layers)[:, lp - 1: lp - 1 + la]
    return model.unembed(model.ln_final(resid)).float()


def answer_nll(model, prompts: Sequence[str], answers: Sequence[str], fwd_hooks=()) -> Float[Tensor, " batch"]:
    """``-log p(answer | prompt)`` summed over the answer's tokens (teacher-forced), per prompt."""
    fwd_hooks = hooks.check_hooks(model, fwd_hooks)
    out = torch.empty(len(prompts))
    groups: dict[tuple[int, int], list[int]] = {}
    toks = [answer_tokens(model, p, a) for p, a in zip(prompts, answers)]
    for i, (p, a) in enumerate(toks):
        groups.setdefault((len(p), len(a)), []).append(i)
    with torch.no_grad():
        for (lp, la), idx in groups.items():
            seq = torch.tensor([toks[i][0] + toks[i][1] for i in idx])
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                logp = _answer_logits(model, seq, lp, la).log_softmax(-1)
            out[idx] = -logp.gather(-1, seq[:, lp:, None])[..., 0].sum(-1).cpu()
    return out


def learned_vector(model, hook_name: str, prompts: Sequence[str], answers: Sequence[str], steps: int = 150,
                   lr: float = 0.5, seed: int = 0) -> Float[Tensor, " d_model"]:
    """The single vector ``v`` that, added at the last prompt position of ``hook_name``, maximises the mean
    ``log p(answer | prompt)`` (every answer token, teacher-forced) over the pairs. Adam, full batch per
    (prompt length, answer length) group, ``v`` starts at 0. The model's weights are left as they were."""
    hooks.check_hook_names(model, [hook_name])
    toks = [answer_tokens(model, p, a) for p, a in zip(prompts, answers)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (p, a) in enumerate(toks):
        groups.setdefault((len(p), len(a)), []).append(i)
    batches = [(lp, la, torch.tensor([toks[i][0] + toks[i][1] for i in idx])) for (lp, la), idx in groups.items()]
    torch.manual_seed(seed)
    v = torch.zeros(model.cfg.d_model, requires_grad=True)
    opt = torch.optim.Adam([v], lr=lr)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            loss = 0.0
            for lp, la, seq in batches:
                def add(x, hook=None, at=lp - 1):  # the last prompt position, as "last_prompt" edits it
                    x = x.clone()
                    x[:, at] = x[:, at] + v.to(x.dtype)
                    return x
                with model.hooks(fwd_hooks=[(hook_name, add)]):
                    logits = _answer_logits(model, seq, lp, la)
                loss = loss - logits.log_softmax(-1).gather(-1, seq[:, lp:, None]).sum()
            loss = loss / len(prompts)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for p, f in zip(model.parameters(), frozen):
            p.requires_grad_(f)
    return v.detach()


def vector_hooks(hook_name: str, vector: Tensor, coeff: float, positions: str = "last_prompt") -> list[hooks.Hook]:
    """``x' = x + coeff v`` at ``positions`` of ``hook_name`` (:func:`steerlab.core.hooks.add_vector`; ``coeff``
    must be finite, a negative one steers away from ``v``)."""
    return hooks.add_vector(hook_name, vector, coeff, positions)
