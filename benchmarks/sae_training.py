"""SAE training throughput: SAELens end to end against the bare activation harvest, side by side in one run.

For each model, on token rows of its suite's training text (``steerlab.evals.sae_quality.suite_rows``) and with the
shipped recipe's SAE (``data/saes/<model>/training.json``: architecture, width, k, batch, context; the KL
fine-tune is left out, it is not SAELens training):

* ``harvest``: :func:`steerlab.sae.train.harvest` alone, the bare rate: one forward per batch for all layers,
  stopped after the deepest needed layer, no unembedding; activations (positions) per second;
* ``saelens``: :func:`steerlab.sae.train_saes` end to end on the same rows (that harvest, then SAELens's
  ``SAETrainer`` on each layer's activations from memory, saving and reloading each SAE), with
  ``training_tokens`` = the rows' activations once; training tokens per second.

``saelens_vs_harvest`` = SAELens tokens/s / harvest activations/s (``ratio``) for ONE SAE at the recipe's middle layer (what a
SAELens run trains: one hook; 1.0 = training adds nothing to the forward). ``saelens_vs_harvest_all_layers`` is
the same for the recipe's layers trained from one harvest: each extra SAE adds its training steps to one forward.
``breakdown_seconds`` splits the end-to-end seconds into its own harvest (the same ``harvest`` call on the same
rows, timed inside the run), each SAE (fit, save, reload) and the rest. ``ratio`` compares against that harvest:
it ran within the same minute of machine load as the training, so it stays meaningful on a shared machine, where
two runs a minute apart differ by up to 2x; ``ratio_standalone`` compares against the harvest timed alone just
before (the same figure on an idle machine). Each case is the best of ``--repeats``, harvest and SAELens
alternating. Writes ``results/benchmarks/sae_training.json``.

    .venv/bin/python benchmarks/sae_training.py [--models gemma-3-270m tinyworld] [--tokens 8192 65536] [--threads 0]

(tinyworld's forward is ~100x cheaper: give it more tokens, or one burst of another process on a shared machine
decides its figures).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import math
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

import torch

from steerlab import sae as S
from steerlab.evals.sae_quality import suite_rows
from steerlab.models import load_model
from steerlab.models.paths import REPO_ROOT
from steerlab.sae.train import harvest, special_ids
from steerlab.tasks import load_suite


def _rows(model, suite, n_tokens: int, context_size: int) -> torch.Tensor:
    """The fewest rows (from the start of ``suite_rows``) that hold ``n_tokens`` harvested activations (positions
    that are not position 0, ``<bos>`` or ``<pad>``: the harvest's own rule)."""
    n_rows = math.ceil(n_tokens / (context_size - 1))
    excl = torch.tensor(special_ids(model.tokenizer))
    while True:
        rows = suite_rows(model, suite, n_rows, context_size, seed=1)
        kept = (~torch.isin(rows[:, 1:], excl)).sum(1).cumsum(0)
        if kept[-1] >= n_tokens:
            return rows[: int(torch.searchsorted(kept, n_tokens)) + 1]
        n_rows *= 2


def _case(model, rows, cfg: S.SAETrainConfig, repeats: int, profile: bool) -> dict:
    """Bare harvest and ``train_saes`` on ``rows`` alternating ``repeats`` times; the best of each."""
    best_h = best_e2e = None
    for _ in range(repeats):
        t = time.perf_counter()
        acts = harvest(model, rows, cfg.layers, cfg.store_batch_size_prompts)
        t_h = time.perf_counter() - t
        n_acts = int(next(iter(acts.values())).shape[0])
        del acts
        run_cfg = dataclasses.replace(cfg, training_tokens=n_acts // cfg.batch_tokens * cfg.batch_tokens)
        prof = cProfile.Profile() if profile else None
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            if prof:
                prof.enable()
            res = S.train_saes(model, rows, run_cfg, Path(tmp) / "saes")
            if prof:
                prof.disable()
            t_e2e = time.perf_counter() - t
            t_inner = json.loads((Path(tmp) / "saes" / "training.json").read_text())["harvest_seconds"]
        if prof:
            print(f"\nwhere train_saes spends its {t_e2e:.1f} s (layers {list(cfg.layers)}), by cumulative time:")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        if best_h is None or t_h < best_h[0]:
            best_h = (t_h, n_acts)
        if best_e2e is None or t_e2e < best_e2e[0]:
            seconds = {str(layer): s for layer, s in res.seconds.items()}
            best_e2e = (t_e2e, run_cfg.training_tokens, {
                "harvest": t_inner, "per_sae": seconds, "rest": t_e2e - t_inner - sum(seconds.values())})
    harvest_rate = best_h[1] / best_h[0]
    saelens_rate = best_e2e[1] / best_e2e[0]
    in_run_rate = best_h[1] / best_e2e[2]["harvest"]
    return {"layers": list(cfg.layers), "harvest_activations_per_s": in_run_rate,
            "harvest_activations_per_s_standalone": harvest_rate, "saelens_tokens_per_s": saelens_rate,
            "ratio": saelens_rate / in_run_rate, "ratio_standalone": saelens_rate / harvest_rate,
            "harvest_seconds_standalone": best_h[0], "saelens_seconds": best_e2e[0], "activations": best_h[1],
            "training_tokens": best_e2e[1], "breakdown_seconds": best_e2e[2]}


def bench_model(model_name: str, model=None, n_tokens: int = 8192, repeats: int = 1, d_sae: int = 0,
                batch_tokens: int = 0, cases: tuple[str, ...] = ("one_layer", "all_layers"),
                profile: bool = False) -> dict:
    model = model if model is not None else load_model(model_name)
    suite = load_suite(model_name)
    recipe = dataclasses.replace(S.load_recipe(model_name), kl_finetune_steps=0)
    over = {k: v for k, v in (("d_sae", d_sae), ("batch_tokens", batch_tokens)) if v}
    recipe = dataclasses.replace(recipe, **over, training_tokens=max(n_tokens, batch_tokens or recipe.batch_tokens))
    rows = _rows(model, suite, max(n_tokens, recipe.batch_tokens), recipe.context_size)
    out: dict = {"model": model_name, "rows": int(rows.shape[0]), "context_size": recipe.context_size,
                 "architecture": recipe.architecture, "d_sae": recipe.d_sae, "k": recipe.k,
                 "batch_tokens": recipe.batch_tokens, "threads": torch.get_num_threads()}
    layers = {"one_layer": (recipe.layers[len(recipe.layers) // 2],), "all_layers": recipe.layers}
    import sae_lens.training.sae_trainer  # noqa: F401  (warm-up: imports and a first forward are not timed)

    harvest(model, rows[: recipe.store_batch_size_prompts], recipe.layers, recipe.store_batch_size_prompts)
    for case in cases:
        res = _case(model, rows, dataclasses.replace(recipe, layers=layers[case]), repeats, profile)
        out[case] = res
    if "one_layer" in out:
        out["saelens_vs_harvest"] = out["one_layer"]["ratio"]
    if "all_layers" in out:
        out["saelens_vs_harvest_all_layers"] = out["all_layers"]["ratio"]
    return out


def main(argv: list[str] | None = None, models: dict | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gemma-3-270m", "tinyworld"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192],
                    help="activations harvested (and trained on) per case: one value, or one per model")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--d_sae", type=int, default=0, help="SAE width (0: the shipped recipe's)")
    ap.add_argument("--batch", type=int, default=0, help="activations per SAE step (0: the shipped recipe's)")
    ap.add_argument("--cases", nargs="+", default=["one_layer", "all_layers"], choices=["one_layer", "all_layers"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each train_saes run")
    ap.add_argument("--machine_note", default="", help="free text stored in the JSON (e.g. other load)")
    ap.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "sae_training.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
                         f"CPU", "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
              "load_average_start": os.getloadavg()[0], "machine_note": args.machine_note,
              "definition": "saelens_vs_harvest = (training tokens / s of steerlab.sae.train_saes end to end, one SAE "
                            "at the recipe's middle layer) / (activations / s of the bare harvest to that layer, "
                            "the harvest inside the same run; ratio_standalone: timed alone just before); "
                            "saelens_vs_harvest_all_layers: the recipe's layers from one harvest"}
    if len(args.tokens) not in (1, len(args.models)):
        ap.error(f"--tokens takes one value or one per model ({len(args.models)})")
    for name, n_tokens in zip(args.models, args.tokens * len(args.models) if len(args.tokens) == 1 else args.tokens):
        res = bench_model(name, (models or {}).get(name), n_tokens, args.repeats, args.d_sae, args.batch,
                          tuple(args.cases), args.profile)
        report[name] = res
        for case in args.cases:
            c = res[case]
            print(f"{name} {case} (layers {c['layers']}): harvest {c['harvest_activations_per_s']:.0f} acts/s, "
                  f"SAELens end to end {c['saelens_tokens_per_s']:.0f} tokens/s, ratio {c['ratio']:.2f} (against the "
                  f"harvest timed alone: {c['ratio_standalone']:.2f})")
    report["load_average_end"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
