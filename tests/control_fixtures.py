"""Tiny fixtures for the control-model tests: a 2-layer random tinyworld-vocabulary model and hand-built SAEs."""

import torch
from sae_lens import TopKSAE, TopKSAEConfig

from steerlab import models
from steerlab.models import tokenizer
from steerlab.world import World, WorldConfig


def tiny_model(tmp_dir, seed: int = 0):
    world = World(WorldConfig(n_entities=8, seed=seed))
    tok = tokenizer.build_tokenizer(world.vocabulary(), tmp_dir / "tok")
    cfg = models.ModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=64, seed=seed)
    model = models.build_model(cfg, tok)
    model.eval()
    return model, world


def tiny_sae(layer: int, d_in: int = 32, d_sae: int = 16, k: int = 4, seed: int = 0):
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
    sae = TopKSAE(cfg)
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_in, d_sae, generator=g)
    W_dec = W.T / W.T.norm(dim=1, keepdim=True)
    sae.load_state_dict({"W_enc": W, "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_in)},
                        strict=False)
    return sae
