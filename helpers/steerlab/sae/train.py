"""Training sparse autoencoders with SAELens on any model's residual stream.

Conventions (SAELens): weights ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``; an SAE reads and writes the TransformerLens hook ``sae.cfg.metadata.hook_name``.

Shipped SAEs live in SAELens's own on-disk format, one folder per hook::

    data/saes/tinyworld/blocks.{L}.hook_resid_post/cfg.json               (SAELens config + metadata)
    data/saes/tinyworld/blocks.{L}.hook_resid_post/sae_weights.safetensors
    data/saes/tinyworld/training.json                                      (the recipe: SAETrainConfig + curves)

Training (:func:`train_saes`) runs SAELens's ``LanguageModelSAETrainingRunner`` with the in-memory model as
``override_model`` and tinyworld token rows (:func:`token_rows`) as ``override_dataset``; wandb is off and
every output goes under the caller's folder. Rows are ``<bos> text <eos> <pad> ...`` exactly as the model was
trained (one text per row, right padding); ``<bos>`` and ``<pad>`` positions are excluded from the activations.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.core.activations import model_fingerprint
from steerlab.sae.io import SAE_DIR, hook_name_for, load_sae

log = logging.getLogger(__name__)

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")


@dataclass
class SAETrainConfig:
    """How to train one SAE per hook point with SAELens (saved as the recipe beside the shipped SAEs)."""

    architecture: str = "topk"  # one of ARCHITECTURES
    layers: tuple[int, ...] = (0, 1, 2, 3)  # residual stream layers (hook blocks.{L}.hook_resid_post), one SAE each
    d_sae: int = 512  # latents per SAE (4x d_model of tinyworld)
    k: int = 32  # active latents per token (topk, batchtopk)
    l1_coefficient: float = 5.0  # sparsity penalty (standard: L1; jumprelu: L0 coefficient)
    training_tokens: int = 400_000  # activations seen per SAE (<bos>/<pad> positions excluded)
    batch_tokens: int = 2048  # activations per optimiser step
    lr: float = 1e-3  # Adam learning rate
    lr_warm_up_steps: int = 20  # linear warm-up steps
    context_size: int = 28  # tokens per row (tinyworld texts are <= 27 tokens with <bos>)
    n_batches_in_buffer: int = 256  # mixing buffer size, in rows of context_size activations
    store_batch_size_prompts: int = 64  # rows per model forward when filling the buffer
    seed: int = 0  # SAE init and data seed
    log_every: int = 5  # training steps between recorded curve points
    kl_finetune_steps: int = 0  # then fine-tune the decoder on downstream KL for this many steps (steerlab.sae_finetune)
    kl_finetune_lr: float = 3e-4  # Adam learning rate of that fine-tuning

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAETrainConfig.architecture={self.architecture!r}; use one of {ARCHITECTURES}")
        self.layers = tuple(int(x) for x in self.layers)
        if not self.layers:
            raise ValueError("SAETrainConfig.layers is empty: give at least one layer")
        for name in ("d_sae", "k", "training_tokens", "batch_tokens", "context_size", "n_batches_in_buffer",
                     "store_batch_size_prompts", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SAETrainConfig.{name} must be positive (got {getattr(self, name)})")
        if self.k > self.d_sae:
            raise ValueError(f"SAETrainConfig.k={self.k} exceeds d_sae={self.d_sae}: lower k or raise d_sae")
        if self.n_batches_in_buffer * self.context_size < self.batch_tokens:
            raise ValueError(f"n_batches_in_buffer * context_size ({self.n_batches_in_buffer * self.context_size})"
                             f" must be >= batch_tokens ({self.batch_tokens}): SAELens cannot fill a batch "
                             "otherwise; raise n_batches_in_buffer")
        if self.kl_finetune_steps < 0 or self.kl_finetune_lr <= 0:
            raise ValueError(f"SAETrainConfig: kl_finetune_steps must be >= 0 (0 = off) and kl_finetune_lr > 0 "
                             f"(got {self.kl_finetune_steps}, {self.kl_finetune_lr})")
        if self.training_tokens < self.batch_tokens:
            raise ValueError(f"training_tokens ({self.training_tokens}) < batch_tokens ({self.batch_tokens}): "
                             "no optimiser step would run")


class TrainedSAEs(NamedTuple):
    """Result of :func:`train_saes`."""

    saes: dict  # layer -> SAE (inference SAE, eval mode)
    paths: dict  # layer -> folder with cfg.json + sae_weights.safetensors
    curves: dict  # layer -> {"step": [...], "fvu": [...], "l0": [...]} (fraction of variance unexplained, L0)
    seconds: dict  # layer -> wall-clock training seconds


def token_rows(world, tokenizer, n_rows: int, context_size: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """``n_rows`` training texts as rows ``<bos> text <pad>...`` of exactly ``context_size`` tokens.

    Texts come from ``world.training_stream(seed)`` (the model's own training mixture). A text longer than
    ``context_size - 1`` words is cut.
    """
    if n_rows <= 0 or context_size < 2:
        raise ValueError(f"token_rows needs n_rows > 0 and context_size >= 2 (got {n_rows}, {context_size})")
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    stream = world.training_stream(seed)
    rows = []
    for _ in range(n_rows):
        ids = [bos] + tokenizer.convert_tokens_to_ids(next(stream).split())[: context_size - 1]
        rows.append(ids + [pad] * (context_size - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def _sae_cfg(cfg: SAETrainConfig, d_in: int):
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu")
    if cfg.architecture == "topk":
        return TopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=cfg.k, **common)
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l1_coefficient, **common)
    return StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)


class _CurveRecorder:
    """Torch forward hooks on a training SAE's hook points that record FVU and L0 every ``every`` steps."""

    def __init__(self, sae, every: int):
        self.every, self.calls, self.curve = every, 0, {"step": [], "fvu": [], "l0": []}
        self._x = self._acts = None
        self._handles = [sae.hook_sae_input.register_forward_hook(self._input),
                         sae.hook_sae_acts_post.register_forward_hook(self._post),
                         sae.hook_sae_recons.register_forward_hook(self._recons)]

    def _input(self, _m, _i, out):
        self._x = out.detach()

    def _post(self, _m, _i, out):
        self._acts = out.detach()

    def _recons(self, _m, _i, out):
        self.calls += 1
        if self.calls % self.every or self._x is None or self._x.shape != out.shape:
            return
        x = self._x
        fvu = ((out.detach() - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)
        self.curve["step"].append(self.calls)
        self.curve["fvu"].append(float(fvu))
        acts = self._acts.to_dense() if self._acts is not None and self._acts.is_sparse else self._acts
        self.curve["l0"].append(float((acts > 0).float().sum(-1).mean()) if acts is not None else float("nan"))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextlib.contextmanager
def _quiet_sae_lens():
    """Silence what SAELens prints for a run that is configured on purpose, so a notebook shows our log lines:
    its progress bar and prints, the warnings that the model and dataset are overridden (they are: offline, in
    memory), that the dataset has fewer rows than training tokens (rows hold several tokens each;
    :func:`train_tinyworld_saes` sizes them for one pass), and a tensor-copy warning inside its data loader."""
    sae_log = logging.getLogger("sae_lens")
    level = sae_log.level
    sae_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            yield
    finally:
        sae_log.setLevel(level)


def train_saes(model, rows: Int[Tensor, "batch pos"], cfg: SAETrainConfig, out_dir: str | Path) -> TrainedSAEs:
    """Train one SAE per layer in ``cfg.layers`` with SAELens on the activations of ``rows``.

    Writes ``out_dir/blocks.{L}.hook_resid_post/`` (SAELens format) and ``out_dir/training.json`` (the
    recipe and curves). Nothing is written outside ``out_dir`` and nothing reaches the network. With
    ``cfg.kl_finetune_steps > 0`` each SAE's decoder is then fine-tuned on the downstream KL over the same rows
    (:mod:`steerlab.sae_finetune`; its curve is ``curves[layer]["kl_finetune"]``).
    """
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    if rows.shape[1] < cfg.context_size:
        raise ValueError(f"token rows are {rows.shape[1]} tokens long but context_size={cfg.context_size}: "
                         "build them with token_rows(..., context_size=cfg.context_size)")
    for layer in cfg.layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{model.cfg.n_layers - 1}")
    out_dir = Path(out_dir)
    dataset = Dataset.from_dict({"tokens": rows.tolist()})
    tok = model.tokenizer
    result = TrainedSAEs({}, {}, {}, {})
    for layer in cfg.layers:
        hook = hook_name_for(layer)
        path = out_dir / hook
        runner_cfg = LanguageModelSAERunnerConfig(
            sae=_sae_cfg(cfg, model.cfg.d_model), model_name=model.cfg.model_name, hook_name=hook,
            dataset_path="tinyworld-training-stream", is_dataset_tokenized=True, streaming=False,
            context_size=cfg.context_size, prepend_bos=False, disable_concat_sequences=True,
            exclude_special_tokens=[tok.bos_token_id, tok.pad_token_id],
            n_batches_in_buffer=cfg.n_batches_in_buffer, store_batch_size_prompts=cfg.store_batch_size_prompts,
            training_tokens=cfg.training_tokens, train_batch_size_tokens=cfg.batch_tokens, lr=cfg.lr,
            lr_warm_up_steps=cfg.lr_warm_up_steps, seed=cfg.seed + layer, device="cpu",
            logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, checkpoint_path=str(out_dir / "checkpoints"),
            output_path=str(path), verbose=False, n_batches_for_norm_estimate=10, n_eval_batches=1,
            model_from_pretrained_kwargs={},  # the model is handed in, never loaded by SAELens
        )
        torch.manual_seed(cfg.seed + layer)
        with _quiet_sae_lens():
            runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=dataset, override_model=model)
        runner.sae.cfg.metadata.model_fingerprint = model_fingerprint(model)
        recorder = _CurveRecorder(runner.sae, cfg.log_every)
        start = time.perf_counter()
        try:
            with _quiet_sae_lens():
                runner.run()
        finally:
            recorder.remove()
        _patch_metadata(path, model)
        result.curves[layer] = recorder.curve
        if cfg.kl_finetune_steps:
            from steerlab.sae.finetune import finetune_folder

            _, result.curves[layer]["kl_finetune"] = finetune_folder(model, path, rows, steps=cfg.kl_finetune_steps,
                                                                     lr=cfg.kl_finetune_lr)
        result.seconds[layer] = time.perf_counter() - start
        result.paths[layer] = path
        result.saes[layer] = load_sae(path)
        log.info("trained SAE on %s in %.1f s (final FVU %.3f)", hook, result.seconds[layer],
                 recorder.curve["fvu"][-1] if recorder.curve["fvu"] else float("nan"))
    (out_dir / "training.json").write_text(json.dumps(
        {"config": asdict(cfg), "model_name": model.cfg.model_name, "model_fingerprint": model_fingerprint(model),
         "seconds": result.seconds, "curves": result.curves, "n_rows": int(rows.shape[0])}, indent=1))
    return result


def _patch_metadata(path: Path, model) -> None:
    """Make sure cfg.json names the hook, the model and its fingerprint (hand-built SAEs lack them)."""
    cfg_file = path / "cfg.json"
    spec = json.loads(cfg_file.read_text())
    meta = spec.setdefault("metadata", {})
    meta.setdefault("hook_name", None)
    meta["model_name"] = model.cfg.model_name
    meta["model_fingerprint"] = model_fingerprint(model)
    cfg_file.write_text(json.dumps(spec, indent=1))


def load_recipe(source: str | Path = "tinyworld") -> SAETrainConfig:
    """The :class:`SAETrainConfig` a set of SAEs was trained with, from the ``training.json`` that
    :func:`train_saes` writes beside them (``"tinyworld"``: the shipped SAEs)."""
    path = (SAE_DIR / "tinyworld" if str(source) == "tinyworld" else Path(source)) / "training.json"
    try:
        cfg = json.loads(path.read_text())["config"]
        return SAETrainConfig(**cfg)  # __post_init__ turns the JSON list of layers back into a tuple
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is missing or is not a steerlab SAE recipe ({err}); it is written by "
                         "steerlab.sae.train_saes") from err
