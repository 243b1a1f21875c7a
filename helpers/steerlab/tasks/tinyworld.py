"""tinyworld as a task suite: the generated world's task families behind the :class:`TaskSuite` interface.

The world (``steerlab.world``) is ground truth: every fact, source rule and harm score is known, so every later
stage can be scored against the truth. Its examples are :class:`steerlab.world.Example` (a
:class:`steerlab.tasks.base.Example` scored by ``steerlab.world.score``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from steerlab.tasks.base import Example, TaskSuite
from steerlab.world import FUNCTION_WORDS, TOPICS, World


class TinyworldSuite(TaskSuite):
    """The tasks of one tinyworld (``world``): its facts, knowledge conflicts, requests, multiple choice,
    reasoning chains and topic texts."""

    name = "tinyworld"
    function_words = tuple(FUNCTION_WORDS)

    def __init__(self, world: World):
        self.world = world

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "TinyworldSuite":
        """The suite of the world a tinyworld checkpoint folder was trained on (its ``world.json``)."""
        return cls(World.load(Path(path) / "world.json"))

    def texts(self, n: int, seed: int = 0) -> list[str]:
        stream = self.world.training_stream(seed)
        return [next(stream) for _ in range(n)]

    def topics(self) -> dict[str, list[str]]:
        return {t: list(ws) for t, ws in TOPICS.items()}

    def topic_texts(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(seed)
        return [self.world.topic(rng) for _ in range(n)]

    def facts(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(seed)
        return [self.world.closed_book(rng) for _ in range(n)]

    def conflicts(self, n: int, seed: int = 0, split: str = "eval") -> list[Example]:
        offset = {"fit": 0, "select": 1_000_003, "eval": 2_000_003}[split]
        rng = random.Random(seed + offset)
        return [self.world.open_book(rng, "report", True) for _ in range(n)]

    def requests(self, n: int, seed: int = 0, harmful: bool | None = None,
                 wrapped: bool | None = None) -> list[Example]:
        rng = random.Random(seed)
        return [self.world.request(rng, harmful, wrapped) for _ in range(n)]

    def mcqa(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(seed)
        return [self.world.mcqa(rng) for _ in range(n)]

    def reasoning(self, n: int, seed: int = 0) -> list[Example]:
        rng = random.Random(seed)
        return [self.world.reasoning(rng) for _ in range(n)]


def heldout_like_sampler(world, task: str) -> Callable[[random.Random], Example]:
    """Training prompts from the distribution of ``world.eval_sets()[f"{task}_heldout"]`` (half the questions on
    hidden facts / half the chains with an unseen addition), drawn from the caller's RNG, so with a seed other
    than the evaluation sets' they are different prompt instances."""
    if task == "mcqa":
        hidden = sorted(world.hidden)
        return lambda rng: world.mcqa(rng, rng.choice(hidden) if hidden and rng.random() < 0.5 else None)
    if task == "reasoning":
        return lambda rng: world.reasoning(rng, use_unseen=rng.random() < 0.5)
    raise ValueError(f"no held-out-like sampler for task {task!r}; use 'mcqa' or 'reasoning'")


