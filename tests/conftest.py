"""Shared fixtures: the shipped tinyworld model (loaded once) and a fixed RNG."""

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tinyworld():
    """(model, world) of the shipped default checkpoint in data/tinyworld."""
    from steerlab.models import load_tinyworld

    return load_tinyworld()


@pytest.fixture
def rng():
    return random.Random(0)


@pytest.fixture(scope="session")
def gemma():
    """Gemma 3 270M from its registry package (built into .cache/ by `make setup`), loaded once."""
    from steerlab.models import load_model

    return load_model("gemma-3-270m")
