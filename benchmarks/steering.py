"""Generation throughput with a steering hook versus the same generation without hooks.

Same prompts, one timed run each (after one untimed warm-up), with and without the KV cache. Prints
tokens/s and the ratio steered/unsteered (target >= 0.85). The steering hook is SAE-feature amplification
at every position (``steerlab.features.amplify``), the most expensive edit (an SAE encode per position).

    .venv/bin/python benchmarks/steering.py [--prompts 64] [--tokens 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from steerlab import models
from steerlab.core import run as evaluate
from steerlab.steer import features


def _sae(model, layer: int):
    try:
        from steerlab.sae import load_sae

        return load_sae(layer=layer)
    except (FileNotFoundError, ImportError):  # SAEs not shipped yet: a random SAE of the same shape
        from sae_lens import StandardSAE, StandardSAEConfig

        return StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=8 * model.cfg.d_model))


def timed(model, prompts, tokens, fwd_hooks, use_cache) -> float:
    t = time.perf_counter()
    out = evaluate.complete(model, prompts, tokens, fwd_hooks, use_cache=use_cache)
    dt = time.perf_counter() - t
    return sum(len(o.split()) or 1 for o in out) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layer", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, world = models.load_tinyworld()
    rng = random.Random(0)
    # reasoning prompts: every prompt generates the full chain, so both runs produce the same token counts
    prompts = [world.reasoning(rng).prompt for _ in range(args.prompts)]
    sae = _sae(model, args.layer)
    steer = features.amplify(f"blocks.{args.layer}.hook_resid_post", sae, [0, 1, 2], 0.0)  # alpha 0: same text
    for use_cache in (True, False):
        timed(model, prompts[:4], 2, steer, use_cache)  # warm-up
        base = timed(model, prompts, args.tokens, [], use_cache)
        steered = timed(model, prompts, args.tokens, steer, use_cache)
        print(f"kv_cache={use_cache!s:5}  unsteered {base:8.1f} tok/s  steered {steered:8.1f} tok/s  "
              f"ratio {steered / base:.3f}")


if __name__ == "__main__":
    main()
