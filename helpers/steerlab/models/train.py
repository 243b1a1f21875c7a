"""Training the tinyworld transformer.

The trainer (:func:`train_lm`) is handed an iterator of token batches and callbacks; it never fetches data
itself. :func:`train_tinyworld` wires a world, a tokenizer, a model and the trainer together.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from steerlab.models.tinyworld import ModelConfig, build_model, save_checkpoint
from steerlab.core.runs import deterministic
from steerlab.models.tokenizer import build_tokenizer
from steerlab.world import World, WorldConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train_lm`."""

    steps: int = 6000  # optimiser steps
    batch_size: int = 64  # sequences (examples) per step
    lr: float = 2e-3  # peak learning rate (AdamW), reached after warmup, cosine decay to lr/20
    warmup: int = 200  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay
    seed: int = 0  # data order and initialisation seed
    log_every: int = 50  # steps between loss-curve points
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise ValueError(f"steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must lie in (0, 1) (got {self.lr})")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ValueError(f"warmup must lie in [0, steps) (got {self.warmup} for {self.steps} steps)")


@dataclass
class TrainResult:
    """What :func:`train_lm` returns."""

    steps: list[int] = field(default_factory=list)  # step of each loss-curve point
    losses: list[float] = field(default_factory=list)  # mean training loss over the last log_every steps
    seconds: float = 0.0  # wall-clock training time


def token_batches(texts: Iterator[str], tokenizer, batch_size: int) -> Iterator[Int[Tensor, "batch pos"]]:
    """Batches of ``<bos> text`` token ids, right-padded with ``<pad>`` (id 0) to the longest in the batch."""
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    while True:
        rows = [[bos] + tokenizer.convert_tokens_to_ids(next(texts).split()) for _ in range(batch_size)]
        width = max(map(len, rows))
        yield torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def lm_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], pad_id: int = 0) -> Tensor:
    """Mean next-token cross-entropy over non-pad targets."""
    logits = model(tokens)[:, :-1]
    targets = tokens[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=pad_id)


@deterministic()
def train_lm(model: HookedTransformer, batches: Iterable[Tensor], cfg: TrainConfig,
             callbacks: Iterable[Callable[[int, float], None]] = ()) -> TrainResult:
    """Train ``model`` on ``batches`` with AdamW and a warmup + cosine schedule.

    Each callback is called as ``cb(step, loss)`` after every logged interval. Shows a tqdm bar. Runs under
    :func:`steerlab.runs.deterministic`: with several CPU threads the embedding gradient otherwise accumulates in
    a varying order, and two runs of one seed drift apart from the first steps (in the 8th digit of the loss,
    and by the end to models that behave differently).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr / 20 + (cfg.lr - cfg.lr / 20) * 0.5 * (1 + math.cos(math.pi * frac))

    result, running, start = TrainResult(), 0.0, time.perf_counter()
    model.train()
    it = iter(batches)
    bar = tqdm(range(cfg.steps), desc="training", mininterval=1.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = lm_loss(model, next(it))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            result.steps.append(step + 1)
            result.losses.append(running / n)
            bar.set_postfix(loss=f"{running / n:.3f}")
            log.info("step %d loss %.4f", step + 1, running / n)
            for cb in callbacks:
                cb(step + 1, running / n)
            running = 0.0
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def train_tinyworld(world_cfg: WorldConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    out_dir: str | Path, callbacks: Iterable[Callable[[int, float], None]] = ()
                    ) -> tuple[HookedTransformer, World, TrainResult]:
    """Generate the world, build its tokenizer and model, train, and save a checkpoint in ``out_dir``.

    Same configs and seeds give the same checkpoint (CPU, same torch version and thread count).
    """
    torch.manual_seed(model_cfg.seed)
    world = World(world_cfg)
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(world.vocabulary(), out_dir.with_name(out_dir.name + ".tok"))
    model = build_model(model_cfg, tokenizer)
    batches = token_batches(world.training_stream(train_cfg.seed), tokenizer, train_cfg.batch_size)
    result = train_lm(model, batches, train_cfg, callbacks)
    meta = {"train_config": asdict(train_cfg), "steps": result.steps, "losses": result.losses,
            "train_seconds": result.seconds, "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__}
    save_checkpoint(out_dir, model, world, meta)
    _rm(out_dir.with_name(out_dir.name + ".tok"))
    return model, world, result


def _rm(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)
