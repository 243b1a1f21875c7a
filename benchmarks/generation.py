"""Steered generation against HF generate on the same prompts, side by side in one run.

For each model: greedy generation of ``--tokens`` new tokens (EOS ignored, so every path generates the same
number) on the same prompts, at batch 1 and batch 16 (prompts of different lengths, left-padded), with and
without the KV cache:

* ``hf``: the Hugging Face model's own ``generate`` (unhooked; Gemma only: tinyworld has no HF twin);
* ``unhooked``: steerlab's path, ``steerlab.core.run.complete`` (TransformerLens ``generate``);
* ``steered``: the same path with a steering vector added at a middle layer on every sampled position.

Ratios (higher is better; 1.0 = as fast): ``steered_vs_hf_generate_b1`` / ``_b16`` = HF time / steered time,
``hook_overhead`` = unhooked time / steered time (batch 16, cached), and the no-cache variants. Each time is the
best of ``--repeats`` runs. Writes ``results/benchmarks/generation.json``.

    .venv/bin/python benchmarks/generation.py [--models gemma-3-270m tinyworld] [--tokens 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from steerlab.core import hooks, run
from steerlab.models import gguf, load_model
from steerlab.models.paths import REPO_ROOT

GEMMA_PROMPTS = [
    "The capital of France is", "Q: What is 12 + 30?\nA:", "Once upon a time, in a small village by the sea,",
    "Water boils at", "The most popular sport in Brazil is", "My favourite food is",
    "In 1969, the first person to walk on the Moon was", "The chemical symbol for gold is",
    "A good way to learn a new language is to", "The weather today is", "Dogs are", "The largest planet is",
    "To bake bread you need flour, water and", "The author of Hamlet is", "Computers store data in",
    "The river that flows through Cairo is",
]


def _prompts(model_name: str, model, n: int) -> list[str]:
    if model_name == "tinyworld":
        from steerlab.tasks import load_suite

        return [e.prompt for e in load_suite("tinyworld").facts(n, seed=3)]
    return (GEMMA_PROMPTS * (n // len(GEMMA_PROMPTS) + 1))[:n]


def _best(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each of ``fns`` over ``repeats`` rounds, the functions interleaved within each round, so a
    change of machine load touches all of them alike (the ratios compare times measured side by side)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


@torch.no_grad()
def _hf_generate(hf, tok, prompts: list[str], n_new: int, use_cache: bool) -> None:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    hf.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, use_cache=use_cache,
                pad_token_id=tok.pad_token_id)


def bench_model(model_name: str, model=None, n_new: int = 32, repeats: int = 2, batch: int = 16,
                layer: int | None = None) -> dict:
    model = model if model is not None else load_model(model_name)
    prompts = _prompts(model_name, model, batch)
    layer = model.cfg.n_layers // 2 if layer is None else layer
    torch.manual_seed(0)
    vector = torch.randn(model.cfg.d_model)  # its size does not matter for speed
    steer = hooks.add_vector(f"blocks.{layer}.hook_resid_post", vector, 1.0, "last_prompt+generated")
    hf = tok = None
    if model_name in gguf.REGISTRY:
        hf, tok = gguf.load_hf(gguf.registry_gguf(model_name).parent / "float32")
    out: dict = {"model": model_name, "new_tokens": n_new, "batch": batch, "threads": torch.get_num_threads()}

    def ours(ps, hooked, cache):
        return lambda: run.complete(model, ps, n_new, steer if hooked else (), use_cache=cache, batch_size=batch,
                                    stop_at_eos=False)

    cases = {"b1": prompts[:1], "b16": prompts}
    for label, ps in cases.items():
        for cache in (True, False):
            suffix = label + ("" if cache else "_nocache")
            fns = {"steered": ours(ps, True, cache), "unhooked": ours(ps, False, cache)}
            if hf is not None:
                fns["hf"] = lambda ps=ps, cache=cache: _hf_generate(hf, tok, ps, n_new, cache)
            t = _best(fns, repeats)
            out[f"steered_seconds_{suffix}"] = t["steered"]
            out[f"unhooked_seconds_{suffix}"] = t["unhooked"]
            out[f"hook_overhead_{suffix}"] = t["unhooked"] / t["steered"]
            if hf is not None:
                out[f"hf_seconds_{suffix}"] = t["hf"]
                out[f"steered_vs_hf_generate_{suffix}"] = t["hf"] / t["steered"]
    out["hook_overhead"] = out["hook_overhead_b16"]
    out["tokens_per_second_steered_b16"] = batch * n_new / out["steered_seconds_b16"]
    return out


def main(argv: list[str] | None = None, models: dict | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma-3-270m", "tinyworld"])
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "generation.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
              "date": time.strftime("%Y-%m-%d")}
    for name in args.models:
        res = bench_model(name, (models or {}).get(name), args.tokens, args.repeats, args.batch)
        report[name] = res
        keys = [k for k in res if k.startswith(("steered_vs_hf", "hook_overhead"))]
        print(f"{name}: " + ", ".join(f"{k} {res[k]:.2f}" for k in keys))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
