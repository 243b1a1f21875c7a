"""Reinforcement learning for the control model (CRL) and the RLVR reference, with a verifiable reward.

* :func:`generate` is the batched rollout loop: greedy (or sampled) decoding with the KV cache, hooks applied,
  so a policy hook acts once per generated token; on a rotary model (Gemma) prompts of any lengths share one
  left-padded batch (:func:`steerlab.core.run.batches`).
* :func:`train_control` trains a :class:`steerlab.control.ControlPolicy` with PPO (clipped ratio, learned value
  baseline ``A = R - V(x_t)``) or GRPO (``A = (R - mean_group R) / std_group R``, no critic), an entropy bonus
  and a KL penalty toward the reference policy ``control.ControlPolicy.reference_logp`` ("no steering" for a
  policy with a no-op action; uniform over the candidates for the paper's action, where it acts as an entropy bonus).
  The episode reward ``R`` (1 correct, 0 otherwise: the example's own ``score`` of the decoded completion) is
  given to every step of the episode (no discount: the reward only arrives at the end).
* :func:`train_rlvr` fine-tunes the language model itself with the same reward, rollout budget and clipped
  objective (the RLVR baseline; the LM samples its own tokens, baseline = batch mean).

Trainers are handed a task sampler ``sampler(rng) -> Example`` and callbacks ``fn(update, stats)``.
"""

from __future__ import annotations

import copy
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from steerlab.control import policy as control
from steerlab.core import run
from steerlab.core.hooks import check_hooks
from steerlab.core.runs import deterministic

log = logging.getLogger(__name__)
Example = Any  # a task example: ``prompt``, ``max_new_tokens`` and ``score(completion)`` (steerlab.tasks.base)


def _score(example, completion: str) -> float:
    """The default verifiable reward: 1 when the example's own ``score`` accepts the completion, else 0."""
    return float(example.score(completion))


ALGOS = ("ppo", "grpo")


@dataclass
class RLConfig:
    """PPO / GRPO settings (shared by CRL and the RLVR baseline, so both get the same rollout budget)."""

    algo: str = "ppo"  # "ppo" (learned value baseline) or "grpo" (group-relative baseline, no critic)
    n_updates: int = 60  # policy updates; rollout budget = n_updates * batch_size episodes
    batch_size: int = 64  # episodes per update
    group_size: int = 8  # GRPO: rollouts per prompt (batch_size must be a multiple)
    ppo_epochs: int = 4  # gradient steps per batch of rollouts
    clip: float = 0.2  # PPO ratio clip
    lr: float = 3e-3  # Adam learning rate of the control policy
    lm_lr: float = 1e-4  # Adam learning rate of the LM in the RLVR baseline
    ent_coef: float = 0.01  # entropy bonus weight
    kl_coef: float = 0.0  # weight of KL(pi || reference): "no steering" with a no-op action, else uniform
    vf_coef: float = 0.5  # value-loss weight (PPO)
    max_new_tokens: int = 0  # tokens generated per episode; 0 = by task (1 for single-token tasks)
    log_episodes: int = 2  # episodes per update whose chosen features are logged
    seed: int = 0  # seed of the sampler, policy sampling and initialisation

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"RLConfig.algo must be one of {ALGOS} (got {self.algo!r})")
        for name in ("n_updates", "batch_size", "group_size", "ppo_epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RLConfig.{name} must be positive (got {getattr(self, name)})")
        if self.algo == "grpo" and self.batch_size % self.group_size:
            raise ValueError(f"GRPO needs batch_size ({self.batch_size}) divisible by group_size ({self.group_size})")
        for name in ("lr", "lm_lr", "clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RLConfig.{name} must be positive (got {getattr(self, name)})")
        for name in ("ent_coef", "kl_coef", "vf_coef", "max_new_tokens", "log_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"RLConfig.{name} must be >= 0 (got {getattr(self, name)})")


def tokens_for(examples: Sequence[Example], max_new_tokens: int = 0) -> int:
    """Tokens to generate: ``max_new_tokens`` or the longest the examples' tasks need (1 for one-word answers)."""
    return max_new_tokens or max(int(getattr(e, "max_new_tokens", 0)) or 1 for e in examples)


class Generation(NamedTuple):
    """Output of :func:`generate`.

    Attributes:
        completions: generated text per prompt (decoded, up to ``<eos>``), in prompt order.
        tokens: generated token ids per prompt (``<eos>`` excluded).
        calls: one entry per forward call, in call order: ``(rows, step, alive)`` with ``rows`` the prompt
            indices of the batch rows, ``step`` the generation step, ``alive`` which rows had not ended.
    """

    completions: list[str]
    tokens: list[list[int]]
    calls: list[tuple[list[int], int, Bool[Tensor, " batch"]]]


def next_logits(model, tokens: Tensor, cache=None) -> Float[Tensor, "batch d_vocab"]:
    """Logits of the next token after ``tokens`` [batch, pos] (extending ``cache`` when given), unembedding the
    last position only: a real model's unembedding (Gemma: 262k tokens) would otherwise cost more than the blocks
    for every prompt position. ``tokens`` may be left-padded (the attention mask, kept in ``cache``, hides the
    padding). Hooks on the residual stream act as in a full forward."""
    resid = model(tokens, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers, padding_side="left")
    return model.unembed(model.ln_final(resid[:, -1:]))[:, -1].float()


@torch.no_grad()
def generate(model, prompts: Sequence[str], max_new_tokens: int, fwd_hooks=(), sample: bool = False,
             generator: torch.Generator | None = None, batch_size: int = 64) -> Generation:
    """Decode with the KV cache (one position per call after the prompt), hooks applied; greedy unless
    ``sample``.

    Batches are :func:`steerlab.core.run.batches` of at most ``batch_size`` prompts, run shortest first: on a
    rotary model (Gemma) prompts of any lengths share one left-padded batch (every prompt ends at the last
    position, which is where policy and feature hooks steer; the attention mask hides the padding and rotary
    positions count from each prompt's own first token), on an absolute-position model (tinyworld) each batch
    holds prompts of one token length, unpadded. Greedy tokens equal those of one-prompt runs (tested)."""
    eos = model.tokenizer.eos_token_id
    out_tok: list[list[int]] = [[] for _ in prompts]
    calls = []
    # sorted by width: equal-length groups run in length order, as sampled runs always drew their noise
    for rows, cur in sorted(run.batches(model, prompts, batch_size, max_new_tokens), key=lambda b: b[1].shape[1]):
        cur = cur.to(model.cfg.device)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(rows))
        done = torch.zeros(len(rows), dtype=torch.bool)
        for step in range(max_new_tokens):
            with model.hooks(fwd_hooks=list(fwd_hooks)):
                logits = next_logits(model, cur, cache)
            calls.append((rows, step, ~done))
            nxt = (torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1) if sample
                   else logits.argmax(-1)).cpu()
            for j, t in enumerate(nxt.tolist()):
                if not done[j] and t != eos:
                    out_tok[rows[j]].append(t)
            done = done | (nxt == eos)
            if bool(done.all()):
                break
            cur = nxt[:, None].to(model.cfg.device)
    return Generation([model.tokenizer.decode(t) for t in out_tok], out_tok, calls)


class Rollout(NamedTuple):
    """A batch of controlled episodes, flattened to steps (one step = one token at one layer).

    Attributes:
        examples, completions, rewards (``[episodes]``), tokens (generated ids): per episode.
        layer, episode, step (``[steps]``): where each step happened.
        x ``[steps, d_model]``, cand ``[steps, n_actions]``, actions ``[steps, k]``: state, mask, action.
        logp, value ``[steps]``: behaviour-policy log-prob and value estimate at rollout time.
    """

    examples: list[Example]
    completions: list[str]
    rewards: Float[Tensor, " episodes"]
    layer: Int[Tensor, " steps"]
    episode: Int[Tensor, " steps"]
    step: Int[Tensor, " steps"]
    x: Float[Tensor, "steps d_model"]
    cand: Bool[Tensor, "steps n_actions"]
    actions: Int[Tensor, "steps k"]
    logp: Float[Tensor, " steps"]
    value: Float[Tensor, " steps"]
    tokens: list[list[int]]


def rollout(model, policy: control.ControlPolicy, saes, examples: Sequence[Example], greedy: bool = False,
            max_new_tokens: int = 0, reward_fn: Callable[[Example, str], float] = _score,
            generator: torch.Generator | None = None) -> Rollout:
    """Run ``examples`` with the policy steering every generated token; score each completion."""
    trace = control.Trace()
    hooks = control.policy_hooks(policy, saes, greedy=greedy, trace=trace, generator=generator)
    gen = generate(model, [e.prompt for e in examples], tokens_for(examples, max_new_tokens), hooks)
    n_layers = len(policy.cfg.layers)
    cols = defaultdict(list)
    for c, (rows, step, alive) in enumerate(gen.calls):
        for entry in trace.steps[c * n_layers: (c + 1) * n_layers]:
            a = entry["action"]
            keep = alive
            cols["layer"].append(torch.full((int(keep.sum()),), entry["layer"]))
            cols["episode"].append(torch.tensor(rows)[keep])
            cols["step"].append(torch.full((int(keep.sum()),), step))
            for name, t in (("x", entry["x"]), ("cand", entry["cand"]), ("actions", a.actions),
                            ("logp", a.logp), ("value", a.value)):
                cols[name].append(t[keep])
    rewards = torch.tensor([float(reward_fn(e, c)) for e, c in zip(examples, gen.completions)])
    return Rollout(list(examples), gen.completions, rewards, **{k: torch.cat(v) for k, v in cols.items()},
                   tokens=gen.tokens)


def _advantages(r: Rollout, algo: str, group_size: int) -> Float[Tensor, " steps"]:
    if algo == "grpo":
        g = r.rewards.view(-1, group_size)
        ep_adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).flatten()
        return ep_adv[r.episode]
    adv = r.rewards[r.episode] - r.value
    return (adv - adv.mean()) / (adv.std() + 1e-4) if adv.numel() > 1 else adv


def ppo_update(policy: control.ControlPolicy, opt: torch.optim.Optimizer, r: Rollout, cfg: RLConfig) -> dict:
    """Clipped-ratio policy update (plus value regression for PPO) on one batch of rollouts."""
    adv = _advantages(r, cfg.algo, cfg.group_size)
    ret = r.rewards[r.episode]
    stats = {}
    for _ in range(cfg.ppo_epochs):
        losses, ents, kls, vls = [], [], [], []
        for layer in policy.cfg.layers:
            m = r.layer == layer
            ev = policy.evaluate(layer, r.x[m], r.cand[m], r.actions[m])
            ratio = (ev.logp - r.logp[m]).exp()
            pg = -torch.min(ratio * adv[m], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv[m]).mean()
            vl = (ev.value - ret[m]).pow(2).mean() if cfg.algo == "ppo" else torch.zeros(())
            losses.append(pg + cfg.vf_coef * vl - cfg.ent_coef * ev.entropy.mean() + cfg.kl_coef * ev.kl.mean())
            ents.append(ev.entropy.mean().item())
            kls.append(ev.kl.mean().item())
            vls.append(vl.item())
        opt.zero_grad()
        torch.stack(losses).sum().backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        stats = {"entropy": sum(ents) / len(ents), "kl": sum(kls) / len(kls), "value_loss": sum(vls) / len(vls)}
    return stats


def _batch(sampler: Callable[[random.Random], Example], rng: random.Random, cfg: RLConfig) -> list[Example]:
    if cfg.algo == "grpo":
        return [e for e in (sampler(rng) for _ in range(cfg.batch_size // cfg.group_size))
                for _ in range(cfg.group_size)]
    return [sampler(rng) for _ in range(cfg.batch_size)]


def _choices(model, r: Rollout, n: int, update: int) -> list[dict]:
    """Which feature each of the first ``n`` episodes chose at which token (and layer)."""
    out = []
    for ep in range(min(n, len(r.examples))):
        m = r.episode == ep
        gen = [model.tokenizer.decode([t]) for t in r.tokens[ep]]
        steps = [(int(s), int(l), r.actions[i].tolist()) for i, (s, l) in
                 enumerate(zip(r.step.tolist(), r.layer.tolist())) if m[i]]
        out.append({"update": update, "prompt": r.examples[ep].prompt, "completion": r.completions[ep],
                    "reward": float(r.rewards[ep]),
                    "choices": [{"step": s, "token": gen[s] if s < len(gen) else "<eos>", "layer": l, "features": a}
                                for s, l, a in steps]})
    return out


@dataclass
class TrainResult:
    """History of a training run: per-update lists (``reward``, ``entropy``, ``kl``, ``value_loss``), the
    logged episodes (``choices``: prompt, completion, reward, per-step token/layer/features), and how often each
    ``(layer, feature)`` was chosen over training (``feature_counts``; the no-op of a ``noop`` policy is feature
    ``d_sae``)."""

    history: dict = field(default_factory=lambda: defaultdict(list))
    choices: list = field(default_factory=list)
    feature_counts: Counter = field(default_factory=Counter)


def train_control(model, policy: control.ControlPolicy, saes, sampler: Callable[[random.Random], Example],
                  cfg: RLConfig, callbacks: Sequence[Callable[[int, dict], None]] = (),
                  reward_fn: Callable[[Example, str], float] = _score) -> TrainResult:
    """Train ``policy`` (the LM stays frozen) on episodes drawn from ``sampler``; returns the history. Runs under
    :func:`steerlab.runs.deterministic`, so one seed gives one policy."""
    with deterministic():
        return _train_control(model, policy, saes, sampler, cfg, callbacks, reward_fn)


def _train_control(model, policy, saes, sampler, cfg: RLConfig, callbacks, reward_fn) -> TrainResult:
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    res = TrainResult()
    for p in model.parameters():
        p.requires_grad_(False)
    for u in tqdm(range(cfg.n_updates), desc="CRL updates"):
        r = rollout(model, policy, saes, _batch(sampler, rng, cfg), False, cfg.max_new_tokens, reward_fn, gen)
        stats = {"reward": float(r.rewards.mean()), **ppo_update(policy, opt, r, cfg)}
        for k, v in stats.items():
            res.history[k].append(v)
        res.feature_counts.update(zip(r.layer.tolist(), r.actions[:, 0].tolist()))
        logged = _choices(model, r, cfg.log_episodes, u)
        res.choices.extend(logged)
        log.debug("update %d %s %s", u, stats, logged)
        for cb in callbacks:
            cb(u, stats)
    policy.eval()
    return res


def _sequence_logp(model, prompts_tok: Tensor, gen_tok: Tensor, n_valid: Tensor) -> Float[Tensor, " batch"]:
    """Sum of the LM's log-probs of the first ``n_valid`` generated tokens of each row (prompt rows of equal length)."""
    T = prompts_tok.shape[1]
    logits = model(torch.cat([prompts_tok, gen_tok], 1))[:, T - 1: -1].log_softmax(-1)
    lp = logits.gather(-1, gen_tok[..., None]).squeeze(-1)
    valid = torch.arange(gen_tok.shape[1])[None] < n_valid[:, None]
    return (lp * valid).sum(-1)


def train_rlvr(model, sampler: Callable[[random.Random], Example], cfg: RLConfig,
               callbacks: Sequence[Callable[[int, dict], None]] = (),
               reward_fn: Callable[[Example, str], float] = _score):
    """RLVR baseline: fine-tune a copy of the LM on its own sampled answers with the same reward and rollout
    budget as CRL (clipped-ratio objective on sequence log-probs, baseline = batch mean). Returns
    ``(tuned_model, history)``; ``model`` itself is left untouched. Runs under :func:`steerlab.runs.deterministic`,
    so one seed gives one model."""
    with deterministic():
        return _train_rlvr(model, sampler, cfg, callbacks, reward_fn)


def _train_rlvr(model, sampler, cfg: RLConfig, callbacks, reward_fn):
    tuned = copy.deepcopy(model)
    tuned.train()
    for p in tuned.parameters():
        p.requires_grad_(True)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(tuned.parameters(), lr=cfg.lm_lr)
    eos = model.tokenizer.eos_token_id
    history = defaultdict(list)
    for u in tqdm(range(cfg.n_updates), desc="RLVR updates"):
        exs = _batch(sampler, rng, cfg)
        g = generate(tuned, [e.prompt for e in exs], tokens_for(exs, cfg.max_new_tokens), sample=True, generator=gen)
        rewards = torch.tensor([float(reward_fn(e, c)) for e, c in zip(exs, g.completions)])
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
        groups = defaultdict(list)
        for i, e in enumerate(exs):
            groups[tuned.to_tokens(e.prompt).shape[1]].append(i)
        batches = []
        for rows in groups.values():
            n_valid = torch.tensor([min(len(g.tokens[i]) + 1, tokens_for(exs, cfg.max_new_tokens)) for i in rows])
            width = int(n_valid.max())
            gt = torch.full((len(rows), width), eos)
            for j, i in enumerate(rows):
                gt[j, : len(g.tokens[i][:width])] = torch.tensor(g.tokens[i][:width], dtype=torch.long)
            pt = tuned.to_tokens([exs[i].prompt for i in rows])
            with torch.no_grad():
                old = _sequence_logp(tuned, pt, gt, n_valid)
            batches.append((rows, pt, gt, n_valid, old))
        for _ in range(cfg.ppo_epochs):
            opt.zero_grad()
            for rows, pt, gt, n_valid, old in batches:
                ratio = (_sequence_logp(tuned, pt, gt, n_valid) - old).exp()
                a = adv[rows]
                loss = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).sum() / len(exs)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
            opt.step()
        history["reward"].append(float(rewards.mean()))
        for cb in callbacks:
            cb(u, {"reward": float(rewards.mean())})
    tuned.eval()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned, history


SETTINGS = {"mcqa_single": "mcqa", "mcqa_multi": "mcqa", "reasoning": "reasoning"}
