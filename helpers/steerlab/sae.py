"""Sparse autoencoders: training with SAELens on tinyworld, loading shipped or pretrained SAEs, splicing.

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
import hashlib
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

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SAE_DIR = DATA_DIR / "saes"
DEFAULT_LAYER = 2  # the layer whose SAE the steering stage (SPARE) uses: mid-depth, where context vs memory is read
ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "standard")


def hook_name_for(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


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


def fingerprint(t: Tensor) -> str:
    """A short hash of a weight tensor: identifies an SAE (its ``W_dec``) or a model (its ``W_U``)."""
    return hashlib.sha256(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """A short hash of the model's unembedding: tells two checkpoints of the same architecture apart."""
    return fingerprint(model.W_U)


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
            from steerlab.sae_finetune import finetune_folder

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


def train_tinyworld_saes(model, world, cfg: SAETrainConfig, out_dir: str | Path) -> TrainedSAEs:
    """The shipped recipe: rows from ``world.training_stream(cfg.seed + 1)`` (enough for ``training_tokens``
    activations once, ~15 kept tokens a row), then :func:`train_saes`."""
    n_rows = max(cfg.training_tokens // 12, 64)
    rows = token_rows(world, model.tokenizer, n_rows, cfg.context_size, seed=cfg.seed + 1)
    return train_saes(model, rows, cfg, out_dir)


def _patch_metadata(path: Path, model) -> None:
    """Make sure cfg.json names the hook, the model and its fingerprint (hand-built SAEs lack them)."""
    cfg_file = path / "cfg.json"
    spec = json.loads(cfg_file.read_text())
    meta = spec.setdefault("metadata", {})
    meta.setdefault("hook_name", None)
    meta["model_name"] = model.cfg.model_name
    meta["model_fingerprint"] = model_fingerprint(model)
    cfg_file.write_text(json.dumps(spec, indent=1))


# ---------------------------------------------------------------------------------------------- loading
def _folder(source: str, layer: int | None, hook_name: str | None) -> Path | None:
    if source == "tinyworld":
        hook = hook_name or hook_name_for(DEFAULT_LAYER if layer is None else layer)
        return SAE_DIR / "tinyworld" / hook
    p = Path(source)
    if p.is_dir():
        return p / (hook_name or hook_name_for(layer)) if (layer is not None or hook_name) else p
    return None


def load_sae(source: str | Path = "tinyworld", layer: int | None = None, hook_name: str | None = None,
             sae_id: str | None = None, model=None):
    """Load an SAE (inference ``sae_lens.SAE``, eval mode, CPU).

    ``source``: ``"tinyworld"`` (shipped, ``layer`` defaults to :data:`DEFAULT_LAYER`), a folder holding
    ``cfg.json`` (or a folder of per-hook folders, with ``layer``/``hook_name``), or a SAELens release name
    with ``sae_id`` (``SAE.from_pretrained``; offline this raises a ConnectionError that names the offline
    default). With ``model``, :func:`check_fits` checks that the SAE fits it.
    """
    from sae_lens import SAE

    folder = _folder(str(source), layer, hook_name)
    if folder is not None:
        if not (folder / "cfg.json").is_file():
            raise FileNotFoundError(f"no SAE at {folder} (cfg.json missing); train one with "
                                    "steerlab.sae.train_saes or notebook 01, or pick another layer/hook_name")
        sae = SAE.load_from_disk(str(folder), device="cpu")
    else:
        if sae_id is None:
            raise ValueError(f"{source!r} is not a folder nor 'tinyworld': for a SAELens release give sae_id= "
                             "(see sae_lens pretrained_saes.yaml)")
        try:
            sae = SAE.from_pretrained(str(source), sae_id, device="cpu")
        except (OSError, ConnectionError, RuntimeError) as err:
            raise ConnectionError(
                f"could not load SAE {source!r}/{sae_id!r} from the hub ({type(err).__name__}: {err}). The hub "
                "is not reachable from here or the weights are not cached; use the offline default "
                "load_sae('tinyworld', layer=...) or set HF_HOME to a cache that holds it.") from err
        except ValueError as err:
            raise ValueError(f"SAELens does not know release {source!r} with sae_id {sae_id!r} ({err}); the "
                             "valid names are in sae_lens/pretrained_saes.yaml") from err
    if sae.cfg.metadata.hook_name is None and hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    sae.eval()
    if model is not None:
        check_fits(model, sae)
    return sae


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


def load_saes(layers=(0, 1, 2, 3), source: str | Path = "tinyworld", model=None) -> dict:
    """``{layer: SAE}`` for the residual stream SAEs of ``layers``."""
    return {int(layer): load_sae(source, layer=int(layer), model=model) for layer in layers}


def check_fits(model, sae) -> None:
    """Raise a ValueError that says what to fix unless ``sae`` reads a hook ``model`` has, with the same
    width, and (when the SAE records it) was trained on this model."""
    hook = sae.cfg.metadata.hook_name
    if hook is None:
        raise ValueError("the SAE names no hook (cfg.metadata.hook_name is None): set "
                         "sae.cfg.metadata.hook_name = 'blocks.L.hook_resid_post' for a hand-built SAE")
    if hook not in model.hook_dict:
        some = [h for h in model.hook_dict if h.endswith("hook_resid_post")]
        raise ValueError(f"the SAE reads {hook!r}, which this model does not have (it has e.g. {some}); "
                         "load the SAE for one of those hooks")
    d_in = _hook_width(model, hook)
    if sae.cfg.d_in != d_in:
        raise ValueError(f"the SAE has d_in={sae.cfg.d_in} but {hook!r} of this model is {d_in} wide: it was "
                         "trained for another model; load or train an SAE for this one")
    trained_for = sae.cfg.metadata.model_name
    if trained_for is not None and trained_for != model.cfg.model_name:
        raise ValueError(f"the SAE was trained for model {trained_for!r}, not {model.cfg.model_name!r}: "
                         "load the SAE trained for this model")
    fp = sae.cfg.metadata.model_fingerprint
    if fp is not None and fp != model_fingerprint(model):
        raise ValueError(f"the SAE was trained on another {trained_for!r} checkpoint (fingerprint {fp}, this "
                         f"model {model_fingerprint(model)}): retrain it on this model (notebook 01)")


def _hook_width(model, hook: str) -> int:
    if "hook_resid" in hook or hook.endswith(("hook_attn_out", "hook_mlp_out")):
        return model.cfg.d_model
    tokens = torch.zeros(1, 2, dtype=torch.long)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    return cache[hook].shape[-1]


# ---------------------------------------------------------------------------------------------- using
def encode_pre_topk(sae, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
    """The SAE code before any top-k cut or threshold: ``z = ReLU((x - b_dec) @ W_enc + b_enc)``.

    Topk SAEs trained with ``rescale_acts_by_decoder_norm`` rank latents by ``z * |W_dec|``; that scaling is
    applied here too, so the top-k of this code is the SAE's own code.
    """
    if x.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"x has last dimension {x.shape[-1]} but the SAE reads d_in={sae.cfg.d_in}")
    return torch.relu(encoder_preactivation(sae, x))


def rescales_by_decoder_norm(sae) -> bool:
    """Whether the SAE ranks/scales its latents by the decoder row norms (``rescale_acts_by_decoder_norm``)."""
    return bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))


def encoder_preactivation(sae, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_sae"]:
    """The encoder input before ReLU / top-k / threshold: ``(x - b_dec) @ W_enc + b_enc``, times the decoder
    row norms for ``rescale_acts_by_decoder_norm`` SAEs (as SAELens' ``encode`` does)."""
    pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    return pre * sae.W_dec.norm(dim=-1) if rescales_by_decoder_norm(sae) else pre


def splice_hooks(sae, keep_bos: bool = True) -> list:
    """``[(hook_name, fn)]`` replacing the hook's activation by the SAE reconstruction.

    With ``keep_bos`` position 0 of a multi-token pass (``<bos>``, never in the training activations) keeps
    its clean value; a one-token pass (a KV-cached generation step) is always replaced.
    """
    hook = sae.cfg.metadata.hook_name
    if hook is None:
        raise ValueError("the SAE names no hook: set sae.cfg.metadata.hook_name")

    def fn(x, hook=None):
        recon = sae(x).to(x.dtype)
        if keep_bos and x.shape[1] > 1:
            recon[:, 0] = x[:, 0]
        return recon

    return [(hook, fn)]


def iter_activations(model, rows: Int[Tensor, "batch pos"], hook_name: str, batch_size: int = 256,
                     exclude: tuple[int, ...] = ()) -> Iterator[Float[Tensor, "n d_model"]]:
    """Activations of ``hook_name`` on ``rows`` (batches of rows), flattened over kept positions."""
    excl = torch.tensor(list(exclude), dtype=torch.long)
    for s in range(0, rows.shape[0], batch_size):
        tokens = rows[s: s + batch_size]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name]
        keep = ~torch.isin(tokens, excl) if len(excl) else torch.ones_like(tokens, dtype=torch.bool)
        yield acts[keep]
