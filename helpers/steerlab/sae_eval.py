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
* task accuracy per evaluation set of the world, clean and spliced, and ``max_task_acc_drop``;
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

from steerlab import concepts, evaluate
from steerlab.sae import check_fits, iter_activations, splice_hooks, train_tinyworld_saes
from steerlab.world import score

# evaluation sets with a gold answer (``topic`` texts have none)
TASK_SETS = ("closed_book", "open_book_consistent", "conflict_trusted", "conflict_untrusted", "conflict_mixed",
             "mcqa_heldout", "reasoning_heldout", "harmful_direct", "harmful_jailbreak", "benign")


@dataclass
class ReconStats:
    """Reconstruction and sparsity of an SAE on a set of activations."""

    explained_variance: float  # 1 - SSE / total variance
    mse: float  # mean squared error per element
    mean_l0: float  # active latents per token
    dead_fraction: float  # latents never active
    dense_fraction: float  # latents active on more than dense_threshold of tokens
    n_tokens: int  # activations evaluated
    firing_rate: Tensor  # [d_sae] fraction of tokens on which each latent fires


@torch.no_grad()
def reconstruction_stats(sae, model, rows: Int[Tensor, "batch pos"], dense_threshold: float = 0.1,
                         batch_size: int = 256) -> ReconStats:
    """Explained variance, L0, dead and dense fractions of ``sae`` on the hook activations of ``rows``."""
    check_fits(model, sae)
    tok = model.tokenizer
    sse = 0.0
    n = 0
    s1 = torch.zeros(sae.cfg.d_in, dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0 = 0.0
    for x in iter_activations(model, rows, sae.cfg.metadata.hook_name, batch_size,
                              exclude=(tok.bos_token_id, tok.pad_token_id)):
        z = sae.encode(x)
        x_hat = sae.decode(z)
        sse += float(((x_hat - x) ** 2).sum())
        s1 += x.double().sum(0)
        s2 += (x.double() ** 2).sum()
        active = z > 0
        fires += active.double().sum(0)
        l0 += float(active.sum())
        n += x.shape[0]
    if n == 0:
        raise ValueError("no activations to evaluate: the rows hold only <bos>/<pad> tokens")
    total_var = float(s2 - (s1 ** 2).sum() / n)
    rate = (fires / n).float()
    return ReconStats(explained_variance=1 - sse / total_var, mse=sse / (n * sae.cfg.d_in), mean_l0=l0 / n,
                      dead_fraction=float((rate == 0).float().mean()),
                      dense_fraction=float((rate > dense_threshold).float().mean()), n_tokens=n, firing_rate=rate)


def _zero_hooks(hook_name: str) -> list:
    def fn(x, hook=None):
        out = torch.zeros_like(x)
        if x.shape[1] > 1:
            out[:, 0] = x[:, 0]
        return out

    return [(hook_name, fn)]


def next_token_kl(logp_clean: Tensor, logp: Tensor) -> Tensor:
    """KL(p_clean || p) per position, from log-probabilities over the vocabulary (last dimension)."""
    return (logp_clean.exp() * (logp_clean - logp)).sum(-1)


@torch.no_grad()
def downstream_loss(sae, model, rows: Int[Tensor, "batch pos"], batch_size: int = 128) -> dict[str, float]:
    """Clean, spliced and zero-ablated next-token CE, ``ce_loss_recovered`` and ``kl_to_clean``."""
    check_fits(model, sae)
    pad = model.tokenizer.pad_token_id
    hook = sae.cfg.metadata.hook_name
    totals = {"ce_clean": 0.0, "ce_spliced": 0.0, "ce_zero": 0.0, "kl_to_clean": 0.0}
    n = 0
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        mask = tokens[:, 1:] != pad  # targets that are real tokens
        logp = {}
        for name, hooks in (("clean", []), ("spliced", splice_hooks(sae)), ("zero", _zero_hooks(hook))):
            with model.hooks(fwd_hooks=hooks):
                logp[name] = model(tokens)[:, :-1].float().log_softmax(-1)
            nll = -logp[name].gather(-1, tokens[:, 1:, None])[..., 0]
            totals[f"ce_{name}"] += float(nll[mask].sum())
        totals["kl_to_clean"] += float(next_token_kl(logp["clean"], logp["spliced"])[mask].sum())
        n += int(mask.sum())
    out = {k: v / n for k, v in totals.items()}
    gap = out["ce_zero"] - out["ce_clean"]
    out["ce_loss_recovered"] = (out["ce_zero"] - out["ce_spliced"]) / gap if gap > 0 else float("nan")
    return out


def paired_drop(clean: Sequence[bool], spliced: Sequence[bool]) -> tuple[float, float]:
    """``(drop, se)``: mean of ``clean_i - spliced_i`` over the same prompts, and its standard error
    ``sd(d) / sqrt(n)`` (sample standard deviation). Only prompts that flip contribute to either."""
    if len(clean) != len(spliced) or not len(clean):
        raise ValueError(f"paired_drop needs two equal, non-empty lists (got {len(clean)} and {len(spliced)})")
    d = torch.tensor([float(c) - float(s) for c, s in zip(clean, spliced)], dtype=torch.float64)
    se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
    return float(d.mean()), se


def _clean_and_spliced(sae, model, examples) -> dict:
    clean = [score(e, a) for e, a in zip(examples, evaluate.answer(model, examples))]
    spliced = [score(e, a) for e, a in zip(examples, evaluate.answer(model, examples, fwd_hooks=splice_hooks(sae)))]
    drop, se = paired_drop(clean, spliced)
    return {"n": len(examples), "clean": sum(clean) / len(clean), "spliced": sum(spliced) / len(spliced),
            "drop": drop, "drop_se": se}


def task_accuracy(sae, model, world, n: int = 200) -> pd.DataFrame:
    """Accuracy per evaluation set, clean and with the SAE spliced in (columns n, clean, spliced, drop, drop_se)."""
    check_fits(model, sae)
    sets = world.eval_sets(n)
    rows = [{"task": key, **_clean_and_spliced(sae, model, sets[key])} for key in TASK_SETS]
    return pd.DataFrame(rows).set_index("task")


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
