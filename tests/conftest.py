"""Shared fixtures: the shipped tinyworld model (loaded once) and a fixed RNG."""

import os

os.environ.setdefault("STEERLAB_CELL_TIMEOUT", "900")  # a kernel that stops answering fails its test

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


def make_untied_sae(d_in: int = 128, d_sae: int = 8, seed: int = 0, hook_name: str = "blocks.1.hook_resid_post"):
    """A StandardSAE whose weights catch the usual slips: untied (``W_dec`` is not ``W_enc.T``), encoder columns and
    decoder rows neither orthogonal nor unit-norm, and non-zero ``b_enc`` and ``b_dec``, so a hook that forgets a
    bias, reads with the decoder or writes with encoder columns gives other numbers than the formula."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5 + 0.3 / d_in ** 0.5  # shared offset: not orthogonal
    W_dec = 0.5 * W_enc.T * d_in ** 0.5 / 4 + torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5  # related, untied
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.load_state_dict({"W_enc": W_enc, "W_dec": W_dec, "b_enc": 0.5 * torch.randn(d_sae, generator=g),
                         "b_dec": 0.5 * torch.randn(d_in, generator=g)})
    sae.cfg.metadata.hook_name = hook_name
    return sae


@pytest.fixture
def untied_sae():
    """Factory ``untied_sae(d_in=128, d_sae=8, seed=0, hook_name=...)`` of :func:`make_untied_sae` SAEs."""
    return make_untied_sae
