"""Benchmark of the control model: rollouts per second of CRL generation against unsteered generation of the
same prompts (one run each, printed as a ratio), and the time of one PPO update.

    .venv/bin/python benchmarks/control.py [--n 64] [--threads 1]
"""

import argparse
import random
import time

import torch

from steerlab import control, models
from steerlab.control import rl
from steerlab.tasks import tinyworld as tinyworld_tasks
from steerlab import sae as sae_mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=64, help="prompts (episodes) per measurement")
    ap.add_argument("--layer", type=int, default=3, help="controlled layer")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, world = models.load_tinyworld()
    sae = sae_mod.load_sae(layer=args.layer)
    rng = random.Random(0)
    for task, sampler in (("mcqa", tinyworld_tasks.heldout_like_sampler(world, "mcqa")),
                          ("reasoning", tinyworld_tasks.heldout_like_sampler(world, "reasoning"))):
        exs = [sampler(rng) for _ in range(args.n)]
        pol = control.new_policy(control.ControlConfig(layers=(args.layer,), d_model=model.cfg.d_model,
                                                       d_sae=sae.cfg.d_sae), sae, model)
        n_tok = rl.tokens_for(exs)
        rl.generate(model, [e.prompt for e in exs[:4]], n_tok)  # warm-up (first-call overheads)
        rl.rollout(model, pol, sae, exs[:4])
        t0 = time.perf_counter()
        plain = rl.generate(model, [e.prompt for e in exs], n_tok)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = rl.rollout(model, pol, sae, exs)
        t_crl = time.perf_counter() - t0
        opt = torch.optim.Adam(pol.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        rl.ppo_update(pol, opt, r, rl.RLConfig(batch_size=args.n))
        t_upd = time.perf_counter() - t0
        toks = sum(len(t) for t in plain.tokens)
        toks_crl = sum(len(c.split()) for c in r.completions)
        print(f"{task:9s} {args.n} episodes, tokens generated {toks} unsteered / {toks_crl} CRL | unsteered {args.n / t_plain:7.1f} "
              f"rollouts/s | CRL {args.n / t_crl:7.1f} rollouts/s | CRL/unsteered speed ratio {t_plain / t_crl:.2f} | "
              f"PPO update (4 epochs, {len(r.x)} steps) {t_upd * 1000:.0f} ms")


if __name__ == "__main__":
    main()
