"""Attribution-graph build time and peak memory against the number of active SAE features.

Prompts of growing length (topic words after ``text :``) give graphs with more active features (top-k SAEs:
k per position and layer). Each size runs in a fresh subprocess so its peak resident memory (``ru_maxrss``
growth during the build) is its own. Prints, per size: positions, active features, backward passes at the
default batch of target rows, build seconds, peak MiB; and once, the batched build against one backward per
target row (batch 1) on the smallest prompt, as a ratio.

    .venv/bin/python benchmarks/graph.py [--lengths 8 16 32 64 120] [--sae-source tinyworld] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time


def _one(length: int, sae_source: str, batch_size: int, threads: int) -> dict:
    import resource

    import torch

    from steerlab import models, sae
    from steerlab.circuits import graph
    from steerlab.world import TOPICS

    torch.set_num_threads(threads)
    model, _ = models.load_tinyworld()
    saes = sae.load_saes(source=sae_source)
    rng = random.Random(length)
    words = [w for ws in TOPICS.values() for w in ws]
    prompt = "text : " + " ".join(rng.choice(words) for _ in range(length - 3))
    graph.build_graph(model, saes, "text : guitar", cfg=graph.GraphConfig(batch_size=batch_size))  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    g = graph.build_graph(model, saes, prompt, cfg=graph.GraphConfig(batch_size=batch_size))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"positions": g.n_pos, "features": g.n_features, "backward": g.n_backward, "seconds": seconds,
            "peak_mib": peak / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="*", default=[8, 16, 32, 64, 120])
    ap.add_argument("--sae-source", default="tinyworld")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.child, args.sae_source, args.batch_size, args.threads)))
        return

    def run(length: int, batch: int) -> dict:
        cmd = [sys.executable, __file__, "--child", str(length), "--sae-source", args.sae_source,
               "--batch-size", str(batch), "--threads", str(args.threads)]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])

    print(f"{'positions':>9} {'features':>8} {'backward':>8} {'seconds':>8} {'peak MiB':>9}")
    for length in args.lengths:
        r = run(length, args.batch_size)
        print(f"{r['positions']:9d} {r['features']:8d} {r['backward']:8d} {r['seconds']:8.2f} {r['peak_mib']:9.1f}")
    small = min(args.lengths)
    batched, single = run(small, args.batch_size), run(small, 1)
    print(f"\n{small} positions: batch {args.batch_size}: {batched['backward']} backward passes, "
          f"{batched['seconds']:.2f} s; one target per backward: {single['backward']} passes, {single['seconds']:.2f} s; "
          f"speed-up x{single['seconds'] / batched['seconds']:.1f}")


if __name__ == "__main__":
    main()
