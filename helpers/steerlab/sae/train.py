"""Training sparse autoencoders with SAELens on any model's residual stream.

Conventions (SAELens): weights ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]``; an SAE reads and writes the TransformerLens hook ``sae.cfg.metadata.hook_name``.

SAEs are saved in SAELens's own on-disk format, one folder per hook::

    <out_dir>/blocks.{L}.hook_resid_post/cfg.json               (SAELens config + metadata)
    <out_dir>/blocks.{L}.hook_resid_post/sae_weights.safetensors
    <out_dir>/training.json                                      (the recipe: SAETrainConfig + curves)

Data: :func:`token_rows` turns any texts into rows ``<bos> text <pad> ...`` of ``context_size`` tokens with the
model's own tokenizer (subword or word level). :func:`train_saes` runs the model ONCE over the rows, keeping the
residual stream of every layer in ``cfg.layers`` at every position that is not ``<bos>``/``<pad>`` (and never
position 0: a real model's first position carries a residual norm ~10x the others), then trains one SAE per
layer with SAELens's ``SAETrainer`` on shuffled batches of those activations (several passes when
``cfg.training_tokens`` exceeds the harvest). With ``normalize_activations="expected_average_only_in"`` the
activations are scaled to mean norm ``sqrt(d_model)`` during training and SAELens folds the factor back into
the weights, so the saved SAE reads and writes RAW activations. Nothing reaches the network or wandb.
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
from typing import Iterable, Iterator, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlab.core.activations import model_fingerprint
from steerlab.core.runs import atomic_folder
from steerlab.sae.io import SAE_DIR, hook_name_for, load_sae

log = logging.getLogger(__name__)

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")
NORMALIZATIONS = ("none", "expected_average_only_in")  # SAELens normalize_activations values supported here
B_DEC_INITS = ("zeros", "mean")


@dataclass
class SAETrainConfig:
    """How to train one SAE per hook point with SAELens (saved as the recipe beside the shipped SAEs)."""

    architecture: str = "topk"  # one of ARCHITECTURES
    layers: tuple[int, ...] = (0, 1, 2, 3)  # residual stream layers (hook blocks.{L}.hook_resid_post), one SAE each
    d_sae: int = 512  # latents per SAE (4x d_model of tinyworld)
    k: int = 32  # active latents per token (topk, batchtopk)
    l1_coefficient: float = 5.0  # sparsity penalty (standard: L1; jumprelu: L0 coefficient)
    training_tokens: int = 400_000  # activations seen per SAE (<bos>/<pad> positions excluded; repeats the
    # harvest when the rows hold fewer)
    batch_tokens: int = 2048  # activations per optimiser step
    lr: float = 1e-3  # Adam learning rate
    lr_warm_up_steps: int = 20  # linear warm-up steps
    context_size: int = 28  # tokens per row, <bos> included (the default fits tinyworld's texts)
    n_batches_in_buffer: int = 256  # SAELens's mixing-buffer size in rows (recorded for old recipes; the harvest
    # is shuffled whole, which is what a large buffer approximates)
    store_batch_size_prompts: int = 64  # rows per model forward when harvesting activations
    seed: int = 0  # SAE init and data seed
    log_every: int = 5  # training steps between recorded curve points
    kl_finetune_steps: int = 0  # then fine-tune the decoder on downstream KL for this many steps (steerlab.sae_finetune)
    kl_finetune_lr: float = 3e-4  # Adam learning rate of that fine-tuning
    normalize_activations: str = "none"  # "none" or "expected_average_only_in": train on activations scaled to
    # mean norm sqrt(d_model), folded back into the saved weights (needed on real models' large residuals)
    b_dec_init: str = "zeros"  # "zeros" or "mean": start the decoder bias at the (scaled) activation mean
    dead_feature_window: int = 1000  # SAELens: a latent unfired for this many steps is dead, and TopK's AuxK loss
    # trains it on the residual error; with SAELens's default 1000 a run of fewer steps never revives a latent

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAETrainConfig.architecture={self.architecture!r}; use one of {ARCHITECTURES}")
        self.layers = tuple(int(x) for x in self.layers)
        if not self.layers:
            raise ValueError("SAETrainConfig.layers is empty: give at least one layer")
        for name in ("d_sae", "k", "training_tokens", "batch_tokens", "context_size", "n_batches_in_buffer",
                     "store_batch_size_prompts", "log_every", "dead_feature_window"):
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
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"SAETrainConfig.normalize_activations={self.normalize_activations!r}; use one of "
                             f"{NORMALIZATIONS}")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"SAETrainConfig.b_dec_init={self.b_dec_init!r}; use one of {B_DEC_INITS}")
        if self.training_tokens < self.batch_tokens:
            raise ValueError(f"training_tokens ({self.training_tokens}) < batch_tokens ({self.batch_tokens}): "
                             "no optimiser step would run")


class TrainedSAEs(NamedTuple):
    """Result of :func:`train_saes`."""

    saes: dict  # layer -> SAE (inference SAE, eval mode)
    paths: dict  # layer -> folder with cfg.json + sae_weights.safetensors
    curves: dict  # layer -> {"step": [...], "fvu": [...], "l0": [...]} (fraction of variance unexplained, L0)
    seconds: dict  # layer -> wall-clock training seconds


def token_rows(texts: Iterable[str], tokenizer, n_rows: int, context_size: int, pack: bool = False,
               separator: str = "\n\n") -> Int[Tensor, "batch pos"]:
    """``n_rows`` rows of exactly ``context_size`` tokens, each ``<bos>`` followed by text tokens.

    Each text is tokenized by ``tokenizer`` (a Hugging Face tokenizer: any subword or word-level scheme; no
    special tokens added). Without ``pack`` a row is one text, cut after ``context_size - 1`` tokens and padded
    with ``<pad>`` (tinyworld's layout: one text per row, as the model was trained). With ``pack`` texts are
    joined by ``separator`` and cut into full rows (no padding, the usual layout for a real model's corpus;
    the rest of a text that does not fit starts the next row). A tokenizer without a pad token pads with its eos
    token. Raises when ``texts`` runs out before ``n_rows``.
    """
    if n_rows <= 0 or context_size < 2:
        raise ValueError(f"token_rows needs n_rows > 0 and context_size >= 2 (got {n_rows}, {context_size})")
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if bos is None or pad is None:
        raise ValueError("token_rows needs a tokenizer with a bos token and a pad (or eos) token")
    sep = list(tokenizer(separator, add_special_tokens=False)["input_ids"]) if pack else []
    rows: list[list[int]] = []
    buf: list[int] = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not pack:
            rows.append([bos] + ids[: context_size - 1])
        else:
            buf += (sep if buf else []) + ids
            while len(buf) >= context_size - 1 and len(rows) < n_rows:
                rows.append([bos] + buf[: context_size - 1])
                buf = buf[context_size - 1:]
        if len(rows) >= n_rows:
            break
    if len(rows) < n_rows:
        raise ValueError(f"token_rows: the texts ran out after {len(rows)} of {n_rows} rows")
    return torch.tensor([r + [pad] * (context_size - len(r)) for r in rows[:n_rows]], dtype=torch.long)


def special_ids(tokenizer) -> tuple[int, ...]:
    """Token ids never used as SAE training or evaluation activations: ``<bos>`` and ``<pad>``."""
    return tuple(sorted({i for i in (tokenizer.bos_token_id, tokenizer.pad_token_id) if i is not None}))


@torch.no_grad()
def harvest(model, rows: Int[Tensor, "batch pos"], layers: tuple[int, ...], batch_size: int = 64
            ) -> dict[int, Float[Tensor, "n d_model"]]:
    """``{layer: activations}`` of ``blocks.{layer}.hook_resid_post`` over ``rows`` in one pass of the model per
    batch (stopped after the deepest layer), at every position that is not position 0, ``<bos>`` or ``<pad>``;
    the ``n`` kept positions are in row-major order, the same for every layer."""
    names = [hook_name_for(layer) for layer in layers]
    excl = torch.tensor(special_ids(model.tokenizer), dtype=torch.long)
    out: dict[int, list] = {layer: [] for layer in layers}
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size].to(model.cfg.device)
        keep = ~torch.isin(tokens, excl.to(tokens.device))
        keep[:, 0] = False
        _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=max(layers) + 1)
        for layer, name in zip(layers, names):
            out[layer].append(cache[name][keep].float().cpu())
    return {layer: torch.cat(chunks) for layer, chunks in out.items()}


def _batches(acts: Tensor, batch: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches of ``batch`` rows of ``acts`` (a fresh permutation per pass, last partial dropped)."""
    g = torch.Generator().manual_seed(seed)
    if acts.shape[0] < batch:
        raise ValueError(f"only {acts.shape[0]} activations were harvested, fewer than batch_tokens={batch}: "
                         "give more rows")
    while True:
        perm = torch.randperm(acts.shape[0], generator=g)
        for s in range(0, acts.shape[0] - batch + 1, batch):
            yield acts[perm[s: s + batch]]


def _sae_cfg(cfg: SAETrainConfig, d_in: int):
    from sae_lens import (BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, StandardTrainingSAEConfig,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu",
                  normalize_activations=cfg.normalize_activations)
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
    memory) and the norm-estimate progress bar."""
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

    The activations of every layer are harvested in one pass (:func:`harvest`: no position 0, ``<bos>`` or
    ``<pad>``), then each SAE is trained by SAELens's ``SAETrainer`` on ``cfg.training_tokens`` of them.
    Writes ``out_dir/blocks.{L}.hook_resid_post/`` (SAELens format, RAW-activation weights) and
    ``out_dir/training.json`` (the recipe and curves), atomically: into a staging copy ``out_dir.tmp`` that
    replaces ``out_dir`` only when every SAE is saved (a failed or interrupted retrain leaves the previous SAEs and
    recipe loadable and byte-identical). SAEs of layers not in ``cfg.layers`` are kept. Nothing else is written
    and nothing reaches the network. With ``cfg.kl_finetune_steps > 0`` each SAE's decoder is then fine-tuned on the
    downstream KL over the same rows (:mod:`steerlab.sae.finetune`; its curve is
    ``curves[layer]["kl_finetune"]``).
    """
    if rows.shape[1] < cfg.context_size:
        raise ValueError(f"token rows are {rows.shape[1]} tokens long but context_size={cfg.context_size}: "
                         "build them with token_rows(..., context_size=cfg.context_size)")
    for layer in cfg.layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has layers 0..{model.cfg.n_layers - 1}")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    acts = harvest(model, rows, cfg.layers, cfg.store_batch_size_prompts)
    harvest_s = time.perf_counter() - start
    n_acts = int(next(iter(acts.values())).shape[0])
    log.info("harvested %d activations per layer at %s in %.1f s", n_acts, list(cfg.layers), harvest_s)
    model_fp = model_fingerprint(model)  # once: hashing Gemma's 670 MB unembedding takes seconds
    result = TrainedSAEs({}, {}, {}, {})
    # everything is written into a staging copy of out_dir that replaces it only once every SAE and the recipe are
    # saved and load back: an interrupted or failing retrain leaves the previous SAEs and training.json as they were
    with atomic_folder(out_dir) as stage:
        (stage / "training.json").unlink(missing_ok=True)  # the old recipe does not describe the new SAEs
        for layer in cfg.layers:
            path = stage / hook_name_for(layer)
            start = time.perf_counter()
            result.curves[layer] = _train_one(model, acts.pop(layer), layer, cfg, path, model_fp)
            if cfg.kl_finetune_steps:
                from steerlab.sae.finetune import finetune_folder

                _, result.curves[layer]["kl_finetune"] = finetune_folder(model, path, rows, lr=cfg.kl_finetune_lr,
                                                                         steps=cfg.kl_finetune_steps)
            result.seconds[layer] = time.perf_counter() - start
            fvu = result.curves[layer]["fvu"]
            log.info("trained SAE on %s in %.1f s (final FVU %.3f)", hook_name_for(layer), result.seconds[layer],
                     fvu[-1] if fvu else float("nan"))
        (stage / "training.json").write_text(json.dumps(
            {"config": asdict(cfg), "model_name": model.cfg.model_name, "model_fingerprint": model_fp,
             "seconds": result.seconds, "harvest_seconds": harvest_s, "curves": result.curves,
             "n_rows": int(rows.shape[0]), "n_activations": n_acts}, indent=1))
        for layer in cfg.layers:
            result.saes[layer] = load_sae(stage / hook_name_for(layer))  # checked against the new recipe
    result.paths.update({layer: out_dir / hook_name_for(layer) for layer in cfg.layers})
    return result


def _train_one(model, acts: Float[Tensor, "n d_model"], layer: int, cfg: SAETrainConfig, path: Path,
               model_fp: str) -> dict:
    """Train, fold and save one SAE on ``acts`` (raw activations of ``layer``; ``model_fp`` is
    ``model_fingerprint(model)``); returns its curve."""
    from sae_lens import LoggingConfig, TrainingSAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed + layer)
    sae = TrainingSAE.from_dict(_sae_cfg(cfg, model.cfg.d_model).to_dict())
    meta = sae.cfg.metadata
    meta.hook_name, meta.model_name = hook_name_for(layer), model.cfg.model_name
    meta.model_fingerprint = model_fp
    trainer = SAETrainer(cfg=SAETrainerConfig(
        total_training_samples=cfg.training_tokens, train_batch_size_samples=cfg.batch_tokens, lr=cfg.lr,
        lr_end=cfg.lr / 10, lr_warm_up_steps=cfg.lr_warm_up_steps, device="cpu", n_checkpoints=0,
        dead_feature_window=cfg.dead_feature_window,
        checkpoint_path=None, logger=LoggingConfig(log_to_wandb=False)),
        sae=sae, data_provider=_batches(acts, cfg.batch_tokens, cfg.seed + layer))
    scale = 1.0
    if cfg.normalize_activations == "expected_average_only_in":
        # SAELens's own estimate, on the whole harvest: fit() keeps a preset factor and folds it in at the end
        scale = float(model.cfg.d_model ** 0.5 / acts.norm(dim=-1).mean())
        trainer.activation_scaler.scaling_factor = scale
    if cfg.b_dec_init == "mean":
        with torch.no_grad():
            sae.b_dec.copy_(acts.mean(0) * scale)
    recorder = _CurveRecorder(sae, cfg.log_every)
    try:
        with _quiet_sae_lens():
            trainer.fit()  # folds the scaling factor into W_enc, W_dec, b_dec: the result reads raw activations
    finally:
        recorder.remove()
    path.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(path))
    _patch_metadata(path, model, model_fp)
    curve = recorder.curve
    curve["scaling_factor"] = scale
    return curve


def _patch_metadata(path: Path, model, model_fp: str) -> None:
    """Make sure cfg.json names the hook, the model and its fingerprint (hand-built SAEs lack them)."""
    cfg_file = path / "cfg.json"
    spec = json.loads(cfg_file.read_text())
    meta = spec.setdefault("metadata", {})
    meta.setdefault("hook_name", None)
    meta["model_name"] = model.cfg.model_name
    meta["model_fingerprint"] = model_fp
    cfg_file.write_text(json.dumps(spec, indent=1))


def load_recipe(source: str | Path = "tinyworld") -> SAETrainConfig:
    """The :class:`SAETrainConfig` a set of SAEs was trained with, from the ``training.json`` that
    :func:`train_saes` writes beside them (``"tinyworld"``: the shipped SAEs)."""
    path = (SAE_DIR / str(source) if (SAE_DIR / str(source)).is_dir() and "/" not in str(source)
            else Path(source)) / "training.json"
    try:
        cfg = json.loads(path.read_text())["config"]
        return SAETrainConfig(**cfg)  # __post_init__ turns the JSON list of layers back into a tuple
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is missing or is not a steerlab SAE recipe ({err}); it is written by "
                         "steerlab.sae.train_saes") from err
