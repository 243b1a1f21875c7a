"""SAE quality by the field's own measures, for any SAE on any model.

Reconstruction and sparsity are measured on held-out token rows (``<bos>`` and ``<pad>`` positions left out,
as in training); the downstream measures splice the SAE into the forward pass with
:func:`steerlab.sae.splice_hooks` (every position but ``<bos>``):

* ``explained_variance`` = 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 over all kept tokens;
* ``mean_l0``: mean number of active latents per token;
* ``dead_fraction``: latents that never fire on the evaluation tokens; ``dense_fraction``: latents that fire
  on more than ``dense_threshold`` of them;
* ``ce_loss_recovered`` = (CE_zero - CE_spliced) / (CE_zero - CE_clean), with CE the next-token loss over
  non-pad targets and CE_zero the loss with the hook's activation zeroed at the same positions;
* ``kl_to_clean``: mean KL(p_clean || p_spliced) of the next-token distributions over non-pad positions;
* task accuracy per evaluation set of the world (any other suite: its closed-book facts, :func:`suite_task_accuracy`),
  clean and spliced, and ``max_task_acc_drop``;
  :func:`mcqa_split_accuracy` splits held-out multiple choice into known and hidden facts. A drop is a paired
  difference over the same prompts, reported with its standard error (:func:`paired_drop`): at 200 prompts per
  family that error reaches 0.025 (multiple choice), more than the 0.02 target, so notebook 01 measures on 1,000.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from steerlab.evals import concepts
from steerlab.core import run as evaluate
from steerlab.sae.io import check_fits
from steerlab.sae.codes import splice_hooks
from steerlab.sae.metrics import ReconStats, downstream_loss, next_token_kl, reconstruction_stats  # noqa: F401
from steerlab.sae.train import SAETrainConfig, TrainedSAEs, token_rows, train_saes
from steerlab.world import score

HELDOUT_SHARE = 10  # a real suite's text is held out for evaluation when its hash is 0 modulo this

# evaluation sets with a gold answer (``topic`` texts have none)
TASK_SETS = ("closed_book", "open_book_consistent", "conflict_trusted", "conflict_untrusted", "conflict_mixed",
             "mcqa_heldout", "reasoning_heldout", "harmful_direct", "harmful_jailbreak", "benign")


def paired_drop(clean: Sequence[bool], spliced: Sequence[bool]) -> tuple[float, float]:
    """``(drop, se)``: mean of ``clean_i - spliced_i`` over the same prompts, and its standard error
    ``sd(d) / sqrt(n)`` (sample standard deviation). Only prompts that flip contribute to either."""
    if len(clean) != len(spliced) or not len(clean):
        raise ValueError(f"paired_drop needs two equal, non-empty lists (got {len(clean)} and {len(spliced)})")
    d = torch.tensor([float(c) - float(s) for c, s in zip(clean, spliced)], dtype=torch.float64)
    se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    return float(d.mean()), se


def _clean_and_spliced(sae, model, examples) -> dict:
    clean = [bool(e.score(a)) for e, a in zip(examples, evaluate.answer(model, examples))]
    spliced = [bool(e.score(a)) for e, a in zip(examples, evaluate.answer(model, examples,
                                                                           fwd_hooks=splice_hooks(sae)))]
    drop, se = paired_drop(clean, spliced)
    return {"n": len(examples), "clean": sum(clean) / len(clean), "spliced": sum(spliced) / len(spliced),
            "drop": drop, "drop_se": se}


def task_accuracy(sae, model, world, n: int = 200) -> pd.DataFrame:
    """Accuracy per evaluation set, clean and with the SAE spliced in (columns n, clean, spliced, drop, drop_se)."""
    check_fits(model, sae)
    sets = world.eval_sets(n)
    rows = [{"task": key, **_clean_and_spliced(sae, model, sets[key])} for key in TASK_SETS]
    return pd.DataFrame(rows).set_index("task")


def suite_task_accuracy(sae, model, suite, n: int = 200) -> pd.DataFrame:
    """:func:`task_accuracy` on any suite: a tinyworld suite gives the world's evaluation sets; any other
    suite its closed-book ``facts`` (row ``facts``; a paired drop with standard error)."""
    world = getattr(suite, "world", None)
    if world is not None:
        return task_accuracy(sae, model, world, n)
    check_fits(model, sae)
    if not suite.provides("facts"):
        raise ValueError(f"the {suite.name} suite provides no facts: no task to measure the SAE's drop on")
    return pd.DataFrame([{"task": "facts", **_clean_and_spliced(sae, model, suite.facts(n, seed=12345))}]
                        ).set_index("task")


def _heldout(text: str) -> bool:
    import hashlib

    return int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % HELDOUT_SHARE == 0


def suite_rows(model, suite, n_rows: int, context_size: int, seed: int = 0, heldout: bool = False
               ) -> Int[Tensor, "batch pos"]:
    """Token rows of a suite's text for SAE training (``heldout=False``) or evaluation (``True``).

    tinyworld: one training text per row from ``world.training_stream(seed)`` (the model's own mixture, endless,
    so training and evaluation differ by seed). Any other suite: its texts (``suite.texts``) packed into full rows
    by the model's tokenizer; one text in ``HELDOUT_SHARE`` (by a hash of the text) is evaluation-only, the rest
    training-only, so no evaluation text is ever trained on."""
    world = getattr(suite, "world", None)
    if world is not None:
        return token_rows(world.training_stream(seed), model.tokenizer, n_rows, context_size)
    n_texts = 4 * n_rows * max(context_size // 32, 1) * (HELDOUT_SHARE if heldout else 1) + 64
    texts = [t for t in suite.texts(n_texts, seed) if _heldout(t) == heldout]
    return token_rows(texts, model.tokenizer, n_rows, context_size, pack=True)


def train_suite_saes(model, suite, cfg: SAETrainConfig, out_dir: str | Path, n_rows: int | None = None) -> TrainedSAEs:
    """Train ``cfg``'s SAEs on a suite's training text (:func:`suite_rows`, seed ``cfg.seed + 1``): tinyworld's
    recipe (:func:`train_tinyworld_saes`), or for any other suite ``n_rows`` packed rows (default: enough for
    ``cfg.training_tokens`` activations once)."""
    world = getattr(suite, "world", None)
    if world is not None:
        return train_tinyworld_saes(model, world, cfg, out_dir)
    n_rows = n_rows or -(-cfg.training_tokens // (cfg.context_size - 1))
    rows = suite_rows(model, suite, n_rows, cfg.context_size, seed=cfg.seed + 1)
    return train_saes(model, rows, cfg, out_dir)


def layer_quality(saes: Mapping, model, rows: Int[Tensor, "batch pos"], ce_rows: int | None = None) -> pd.DataFrame:
    """One row per layer: explained_variance, mean_l0, dead_fraction, dense_fraction (:func:`reconstruction_stats`
    on ``rows``) and the downstream CE / KL measures (:func:`downstream_loss`, on the first ``ce_rows`` rows)."""
    per_layer = {}
    for layer, s in saes.items():
        rec = reconstruction_stats(s, model, rows)
        per_layer[layer] = {"explained_variance": rec.explained_variance, "mean_l0": rec.mean_l0,
                            "dead_fraction": rec.dead_fraction, "dense_fraction": rec.dense_fraction,
                            **downstream_loss(s, model, rows[:ce_rows] if ce_rows else rows)}
    return pd.DataFrame(per_layer).T.rename_axis("layer")


def mcqa_split_accuracy(sae, model, world, n: int = 200) -> pd.DataFrame:
    """``mcqa_heldout`` split into its known-fact and hidden-fact questions (``meta['hidden']``): n, clean,
    spliced, drop and drop_se per half. On hidden facts the model can only guess, so a change there is a change
    of guesses."""
    check_fits(model, sae)
    exs = world.eval_sets(n)["mcqa_heldout"]
    rows = []
    for name, hidden in (("known facts", False), ("hidden facts", True)):
        part = [e for e in exs if bool(e.meta.get("hidden")) == hidden]
        if part:
            rows.append({"mcqa_heldout": name, **_clean_and_spliced(sae, model, part)})
    return pd.DataFrame(rows).set_index("mcqa_heldout")


def evaluate_sae(sae, model, world, rows: Int[Tensor, "batch pos"], n_tasks: int = 200) -> tuple[dict, pd.DataFrame]:
    """All metrics of one SAE: a flat dict (keys as in the module docstring) and the per-task table."""
    rec = reconstruction_stats(sae, model, rows)
    metrics = {"explained_variance": rec.explained_variance, "mse": rec.mse, "mean_l0": rec.mean_l0,
               "dead_fraction": rec.dead_fraction, "dense_fraction": rec.dense_fraction, "n_tokens": rec.n_tokens}
    metrics.update(downstream_loss(sae, model, rows))
    tasks = task_accuracy(sae, model, world, n_tasks)
    metrics["max_task_acc_drop"] = float(tasks["drop"].max())
    return metrics, tasks


def recipe_change(spec: str | Mapping, cfg) -> dict:
    """Parse one recipe variant, ``"k=16"`` or ``"d_sae=1024,seed=1"`` (or a mapping), into field overrides of
    the :class:`steerlab.sae.SAETrainConfig` ``cfg``, each value cast to the field's type. An unknown field, a
    malformed item or a value of the wrong type raises a ``ValueError`` that names the fields."""
    fields = {f.name for f in dataclasses.fields(cfg)}
    items = spec.items() if isinstance(spec, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(spec).split(",") if part.strip())
    out = {}
    for name, value in items:
        name = str(name).strip()
        if name not in fields or name == "layers" or value is None:
            raise ValueError(f"recipe variant {spec!r}: write field=value[,field=value] with fields from "
                             f"{sorted(set(fields) - {'layers'})}; {name!r} is not one or has no value")
        kind, text = type(getattr(cfg, name)), str(value).strip()
        try:
            if kind is bool and text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            out[name] = text.lower() in ("true", "1") if kind is bool else kind(text)
        except ValueError as err:
            raise ValueError(f"recipe variant {spec!r}: {name} must be of type {kind.__name__} (got {value!r})") from err
    if not out:
        raise ValueError(f"recipe variant {spec!r} changes nothing: write field=value, e.g. 'k=16'")
    return out


def variant_label(change: Mapping) -> str:
    """``{"d_sae": 1024, "seed": 1}`` -> ``"d_sae1024_seed1"``: a row label, metric-key part and folder name.
    An architecture is named by itself: ``{"architecture": "standard", "seed": 1}`` -> ``"standard_seed1"``."""
    return "_".join(str(v) if k == "architecture" else f"{k}{v}" for k, v in change.items())


def recipe_of(label: str) -> str:
    """The recipe a sweep row belongs to, its seed left out: ``"seed2"`` and ``"used"`` -> ``"used"`` (the
    recipe of the SAE in use), ``"standard_seed1"`` -> ``"standard"``, ``"k16"`` -> ``"k16"``."""
    rest = re.sub(r"(^|_)seed\d+(?=_|$)", "", label).strip("_")
    return rest or "used"


def recipe_sweep(model, world, cfg, variants: Sequence, layer: int, rows: Int[Tensor, "batch pos"], out_dir,
                 n_tasks: int = 200, n_concept: int = 200, interpret=None) -> pd.DataFrame:
    """Retrain the SAE of ``layer`` with the recipe ``cfg`` (a :class:`steerlab.sae.SAETrainConfig`) changed by
    each of ``variants`` (see :func:`recipe_change`: ``"k=16"``, ``"d_sae=1024"``, ``"seed=1"``) and measure
    each the same way as the SAE it varies: one :func:`summary_row` per variant, indexed by
    :func:`variant_label`, the SAE written under ``out_dir/<label>``.

    The sparsity-fidelity frontier (Gao et al. 2024) in ``k``, the width trade-off in ``d_sae``, and, with a
    new ``seed``, how far two SAEs of the same recipe differ: the yardstick for any other difference in the
    table. ``interpret(sae) -> dict`` adds columns (notebook 01 passes
    ``steerlab.explain_eval.topic_precision``). Every variant is checked before any training starts."""
    changes = [recipe_change(v, cfg) for v in variants]
    labels = [variant_label(c) for c in changes]
    if len(set(labels)) < len(labels):
        raise ValueError(f"recipe_sweep: variants repeat ({labels}); each must differ to get its own row and folder")
    configs = [dataclasses.replace(cfg, layers=(int(layer),), **c) for c in changes]  # validates each
    table = {}
    for label, c in zip(labels, configs):
        sae = train_tinyworld_saes(model, world, c, Path(out_dir) / label).saes[int(layer)]
        quality, tasks = evaluate_sae(sae, model, world, rows, n_tasks)
        table[label] = summary_row(quality, tasks, concepts.concept_table(model, sae, world, n_concept))
        if interpret is not None:
            table[label] |= interpret(sae)
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("variant")


def summary_row(quality, tasks: pd.DataFrame, concept_table: pd.DataFrame) -> dict:
    """One SAE in one row: reconstruction (``quality``: a mapping with explained_variance, mean_l0,
    dead_fraction, ce_loss_recovered, kl_to_clean), its largest task drop with standard error and family (``tasks``, from
    :func:`task_accuracy`) and the share of concepts detected (``concept_table``, from
    ``steerlab.concepts.concept_table``)."""
    worst = tasks["drop"].idxmax()
    return {**{m: float(quality[m]) for m in ("explained_variance", "mean_l0", "dead_fraction", "ce_loss_recovered",
                                              "kl_to_clean")},
            "max_task_acc_drop": float(tasks.loc[worst, "drop"]), "drop_se": float(tasks.loc[worst, "drop_se"]),
            "worst_task": worst, "concepts_detected_fraction": concepts.detected_fraction(concept_table)}


def train_tinyworld_saes(model, world, cfg: SAETrainConfig, out_dir: str | Path) -> TrainedSAEs:
    """The shipped recipe: rows from ``world.training_stream(cfg.seed + 1)`` (enough for ``training_tokens``
    activations once, ~15 kept tokens a row), then :func:`train_saes`."""
    n_rows = max(cfg.training_tokens // 12, 64)
    rows = token_rows(world.training_stream(cfg.seed + 1), model.tokenizer, n_rows, cfg.context_size)
    return train_saes(model, rows, cfg, out_dir)


SPREAD_COLS = ("concepts_detected_fraction", "max_task_acc_drop", "dead_fraction", "mi_precision_at_10",
               "mi_minus_maxact")


def seed_spread(table_sweep: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{recipe: min/mean/max over its seeds}`` of ``SPREAD_COLS`` for the recipe in use (row ``used`` and the
    seed-only variants) and every other recipe swept with several seeds (:func:`recipe_of` groups the rows)."""
    recipes = table_sweep.assign(mi_minus_maxact=table_sweep.mi_precision_at_10 - table_sweep.maxact_precision_at_10,
                                 recipe=[recipe_of(v) for v in table_sweep.index])
    groups = {r: g for r, g in recipes.groupby("recipe", sort=False) if r == "used" or len(g) > 1}
    return {r: g[list(SPREAD_COLS)].agg(["min", "mean", "max"]).assign(n=len(g)) for r, g in groups.items()}


def summary(quality: pd.DataFrame, default_layer: int, tasks: pd.DataFrame, concept_table: pd.DataFrame | None,
            retrained: bool, d_sae: int, n_tasks: int, mcqa_split: pd.DataFrame | None = None,
            sweep: pd.DataFrame | None = None, by_pos: pd.DataFrame | None = None,
            recipe: SAETrainConfig | None = None, probes: pd.DataFrame | None = None) -> dict:
    """Notebook 01's metrics: the default-layer SAE's quality (``quality``: :func:`layer_quality`), its largest
    task drop (``tasks``: :func:`suite_task_accuracy`), concept detection (``concept_table``), per-layer values
    ``layer{L}_*``, and where measured the multiple-choice split, the recipe sweep (``sweep_<variant>_*``,
    ``seeds_*``) and the knowledge source at the answer position. ``recipe`` adds ``training_tokens``; ``probes``
    (:func:`steerlab.evals.concepts.sparse_probe_table`) adds ``sparse_probe_k<k>_mean`` over concepts and
    ``sparse_probe_k<k>_<concept>``."""
    q = quality.loc[default_layer]
    worst = tasks["drop"].idxmax()
    metrics = {m: q[m] for m in ("explained_variance", "ce_loss_recovered", "dead_fraction", "dense_fraction",
                                 "mean_l0", "kl_to_clean")}
    metrics.update({"max_task_acc_drop": float(tasks["drop"].max()),
                    "max_task_acc_drop_se": float(tasks.loc[worst, "drop_se"]), "max_task_acc_drop_task": worst,
                    "n_tasks": n_tasks, "default_layer": default_layer, "retrained": bool(retrained), "d_sae": d_sae})
    if "facts" in tasks.index:  # a real suite: the fact accuracy with and without the SAE
        metrics.update({f"fact_acc_{c}": float(tasks.loc["facts", c]) for c in ("clean", "spliced", "drop", "drop_se")})
    if concept_table is not None:
        metrics.update({"concepts_detected_fraction": concepts.detected_fraction(concept_table),
                        "n_concepts": len(concept_table)})
        metrics.update({f"{c}_auroc": a for c, a in concept_table["auroc"].items()})
    if probes is not None:
        for col in [c for c in probes.columns if c.startswith("k") and c[1:].isdigit()]:
            metrics[f"sparse_probe_{col}_mean"] = float(probes[col].mean())
            metrics.update({f"sparse_probe_{col}_{c}": float(a) for c, a in probes[col].items()})
    if mcqa_split is not None:
        metrics.update({f"mcqa_{h.split()[0]}_acc_drop": float(r["drop"]) for h, r in mcqa_split.iterrows()})
    if sweep is not None and len(sweep):
        for label, row in sweep.iterrows():  # "used" is the SAE above, the rest are the recipe variants
            metrics.update({f"sweep_{label}_{m}": row[m] for m in (
                "explained_variance", "dead_fraction", "max_task_acc_drop", "concepts_detected_fraction",
                "mi_precision_at_10", "maxact_precision_at_10", "kl_to_clean")})
        for r, spread in seed_spread(sweep).items():  # seeds_* for the recipe in use, seeds_<recipe>_* otherwise
            key = "seeds" if r == "used" else f"seeds_{r}"
            metrics[f"{key}_n"] = int(spread["n"].iloc[0])
            metrics.update({f"{key}_{m}_{s}": float(spread.loc[s, m]) for m in SPREAD_COLS for s in ("min", "max")})
    if by_pos is not None:
        metrics["knowledge_source_at_answer_auroc"] = float(by_pos["auroc"].iloc[-1])  # not a concept
    for layer, row in quality.iterrows():
        metrics.update({f"layer{layer}_{m}": row[m] for m in ("explained_variance", "ce_loss_recovered",
                                                              "dead_fraction", "mean_l0")})
        if "kl_to_clean" in row and "facts" in tasks.index:
            metrics[f"layer{layer}_kl_to_clean"] = row["kl_to_clean"]
    if recipe is not None:
        metrics["training_tokens"] = recipe.training_tokens
    return metrics
