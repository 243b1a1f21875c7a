"""The tinyworld transformer: built, saved and loaded offline.

A tinyworld checkpoint folder holds::

    model_cfg.json        the ModelConfig (rebuilds the HookedTransformerConfig)
    model.safetensors     the weights (TransformerLens state dict names)
    tokenizer/            the word-level tokenizer (save_pretrained format)
    world.json            the world spec and ground truth (steerlab.world.World.save)
    training.json         training metadata: seed, steps, seconds, loss curve
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from steerlab.models.paths import DATA_DIR
from steerlab.models.tokenizer import load_tokenizer
from steerlab.world import World

log = logging.getLogger(__name__)

TINYWORLD_DIR = DATA_DIR / "tinyworld"


@dataclass
class ModelConfig:
    """Shape of the tinyworld transformer."""

    n_layers: int = 4  # transformer blocks
    d_model: int = 128  # residual stream width
    n_heads: int = 4  # attention heads per block
    d_mlp: int = 512  # MLP hidden width
    n_ctx: int = 128  # longest sequence (tokens), room for in-context demonstrations
    d_vocab: int = 0  # vocabulary size; 0 = take it from the tokenizer
    seed: int = 0  # initialisation seed

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive (got {getattr(self, name)})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def hooked_config(self) -> HookedTransformerConfig:
        return HookedTransformerConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads, d_mlp=self.d_mlp, d_vocab=self.d_vocab, n_ctx=self.n_ctx,
            act_fn="gelu", normalization_type="LN", seed=self.seed, default_prepend_bos=True,
            model_name="tinyworld", device="cpu",
        )


def build_model(cfg: ModelConfig, tokenizer) -> HookedTransformer:
    """A freshly initialised tinyworld model whose vocabulary is the tokenizer's."""
    if cfg.d_vocab and cfg.d_vocab != len(tokenizer):
        raise ValueError(f"ModelConfig.d_vocab={cfg.d_vocab} but the tokenizer has {len(tokenizer)} tokens")
    cfg = dataclasses.replace(cfg, d_vocab=len(tokenizer))
    model = HookedTransformer(cfg.hooked_config(), tokenizer=tokenizer, default_padding_side="right")
    model.steerlab_cfg = cfg
    return model


def save_checkpoint(path: str | Path, model: HookedTransformer, world: World, training: dict) -> Path:
    """Write a tinyworld checkpoint folder (see the module docstring).

    Files are written to a temporary sibling folder and moved into place at the end, so a failed save
    never leaves a half-written checkpoint where a good one was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model_cfg.json").write_text(json.dumps(dataclasses.asdict(model.steerlab_cfg), indent=1))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    world.save(tmp / "world.json")
    (tmp / "training.json").write_text(json.dumps(training, indent=1))
    if path.exists():
        backup = path.with_name(path.name + ".old")
        if backup.exists():
            _rmtree(backup)
        path.rename(backup)
        tmp.rename(path)
        _rmtree(backup)
    else:
        tmp.rename(path)
    return path


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


def load_tinyworld(path: str | Path = TINYWORLD_DIR) -> tuple[HookedTransformer, World]:
    """Load a tinyworld checkpoint folder: ``(model, world)``. Every error names the file that is wrong.

    The model carries no world: code that needs ground truth takes the task suite
    (``steerlab.tasks.load_suite``), which reads the same ``world.json``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no tinyworld checkpoint folder at {path}; train one with notebook 00 "
                                "(or steerlab.train.train_tinyworld)")
    cfg_file = path / "model_cfg.json"
    try:
        cfg = ModelConfig(**json.loads(cfg_file.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{cfg_file} is missing or malformed ({err})") from err
    tokenizer = load_tokenizer(path / "tokenizer")
    if len(tokenizer) != cfg.d_vocab:
        raise ValueError(f"{path / 'tokenizer'} has {len(tokenizer)} tokens but {cfg_file} says d_vocab="
                         f"{cfg.d_vocab}: the tokenizer belongs to another model")
    world = World.load(path / "world.json")
    if world.vocabulary() != [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]:
        raise ValueError(f"{path / 'world.json'} and {path / 'tokenizer'} disagree on the vocabulary")
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{weights} is missing or corrupt ({err})") from err
    model = build_model(cfg, tokenizer)
    expected = model.state_dict()
    bad = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    if bad or set(state) - set(expected):
        raise ValueError(f"{weights} does not match {cfg_file}: mismatched or missing tensors {bad[:5]}")
    model.load_state_dict(state)
    model.eval()
    return model, world
