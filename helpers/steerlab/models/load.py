"""``load_model``: one entry point for every model steerlab studies.

All TransformerLens calls of steerlab that build or load a model live in ``steerlab.models``, so a move to
TL 4's ``TransformerBridge`` touches one package.
"""

from __future__ import annotations

from pathlib import Path

from transformer_lens import HookedTransformer

from steerlab.models.fast import speed_up
from steerlab.models.tinyworld import TINYWORLD_DIR, load_tinyworld

OFFLINE_DEFAULT = "tinyworld"
REAL_DEFAULT = "gemma-3-270m"
DEVICES = ("cpu", "cuda", "mps", "auto")


def resolve_device(device: str = "cpu") -> str:
    """``device`` checked against this machine: ``auto`` picks CUDA, then MPS, then the CPU; asking for a device
    that is absent is an error that says so (not an assertion deep inside torch)."""
    import torch

    base = str(device).split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"device={device!r}; use one of {DEVICES} (or 'cuda:N')")
    if base == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if base == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but torch sees no CUDA GPU here (torch {torch.__version__}, "
                           f"CUDA build: {torch.version.cuda}); use device='cpu' or 'auto'")
    if base == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={device!r} but MPS is not available here; use device='cpu' or 'auto'")
    return device


def load_model(name: str = OFFLINE_DEFAULT, device: str = "cpu", dtype: str = "float32",
               **kwargs) -> HookedTransformer:
    """Load a model by name or path, offline.

    * ``"tinyworld"`` or a tinyworld checkpoint folder (``model_cfg.json``): the shipped toy model (``data/``);
    * ``"gemma-3-270m"``: Gemma 3 270M from its registry package (:mod:`steerlab.models.gguf`);
    * a ``.gguf`` file: any GGUF model transformers can dequantize (``tl_name=`` when steerlab does not map
      its architecture);
    * a Hugging Face model folder (``config.json``): :func:`steerlab.models.hub.load_folder`;
    * any other name: a TransformerLens name (``gpt2-small``) from the local Hugging Face cache
      (``allow_download=True`` lets it reach the hub).
    """
    device = resolve_device(device)
    return speed_up(_load(name, device, dtype, **kwargs))


def _load(name: str, device: str, dtype: str, **kwargs) -> HookedTransformer:
    from steerlab.models import gguf, hub

    p = Path(str(name))
    if name == OFFLINE_DEFAULT or (p.is_dir() and (p / "model_cfg.json").is_file()):
        model, _ = load_tinyworld(TINYWORLD_DIR if name == OFFLINE_DEFAULT else p)  # its world: tasks.load_suite
        return model.to(device)
    if name in gguf.REGISTRY:
        return gguf.load_registry_model(name, device=device, dtype=dtype)
    if p.suffix == ".gguf" or p.is_file():
        return gguf.load_gguf(p, device=device, dtype=dtype, **kwargs)
    if p.is_dir():
        return hub.load_folder(p, device=device, dtype=dtype, **kwargs)
    if "/" in str(name) and str(name).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no model at {name}: the path does not exist (a model is a tinyworld checkpoint "
                                "folder, a model folder or a .gguf file)")
    return hub.load_hub(str(name), device=device, dtype=dtype, **kwargs)
