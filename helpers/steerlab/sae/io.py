"""Loading SAEs (shipped folders, any SAELens folder, SAELens releases) and checking that one fits a model.

Shipped SAEs live in SAELens's own on-disk format, one folder per hook::

    data/saes/tinyworld/blocks.{L}.hook_resid_post/cfg.json               (SAELens config + metadata)
    data/saes/tinyworld/blocks.{L}.hook_resid_post/sae_weights.safetensors
    data/saes/tinyworld/training.json                                      (the recipe: SAETrainConfig + curves)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from steerlab.core.activations import model_fingerprint
from steerlab.core.hooks import hook_name_for
from steerlab.models.paths import DATA_DIR

SAE_DIR = DATA_DIR / "saes"
DEFAULT_LAYER = 2  # tinyworld's layer whose SAE the steering stage (SPARE) uses: mid-depth
# per model: the layer of the SAE the later notebooks explain and steer by default (a middle layer)
DEFAULT_LAYERS = {"tinyworld": DEFAULT_LAYER, "gemma-3-270m": 9}


def default_layer(model_name: str) -> int:
    """The default SAE layer of a model (``DEFAULT_LAYERS``; a model not listed: its middle layer is not known
    here, so the error says to pass ``layer``)."""
    if model_name in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[model_name]
    raise ValueError(f"no default SAE layer for model {model_name!r}: pass layer= explicitly "
                     f"(defaults exist for {sorted(DEFAULT_LAYERS)})")


def shipped_sae_dir(model_name: str) -> Path:
    """``data/saes/<model_name>``: where the SAEs steerlab ships (or notebook 01 retrains) for a model live."""
    return SAE_DIR / model_name


def _folder(source: str, layer: int | None, hook_name: str | None) -> Path | None:
    if (SAE_DIR / source).is_dir() and "/" not in source:  # a model name: its shipped SAEs
        hook = hook_name or hook_name_for(default_layer(source) if layer is None else layer)
        return SAE_DIR / source / hook
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
        sae = read_folder(folder)
        asked = hook_name or (hook_name_for(layer) if layer is not None else None)
        if asked is None and (SAE_DIR / str(source)).is_dir():
            asked = folder.name
        got = sae.cfg.metadata.hook_name
        if asked is not None and got is not None and got != asked:
            raise ValueError(f"the SAE in {folder} reads {got!r}, but it was asked to serve {asked!r}: the folder "
                             f"holds the SAE of another hook; move it to a folder named {got!r} or load it "
                             f"with hook_name={got!r}")
        _check_recipe(folder, sae)
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


def read_folder(folder: str | Path):
    """``SAE.load_from_disk`` with errors that name the file and say what is wrong (a missing or malformed
    ``cfg.json``, an architecture SAELens does not know, truncated weights, weights that disagree with the cfg)."""
    from safetensors import SafetensorError
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY

    folder = Path(folder)
    cfg_file, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no SAE at {folder} (cfg.json missing); train one with "
                                "steerlab.sae.train_saes or notebook 01, or pick another layer/hook_name")
    try:
        spec = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file} is not valid JSON ({err}); restore it from the training run or retrain "
                         "the SAE (notebook 01)") from err
    arch = spec.get("architecture")
    if arch not in SAE_CLASS_REGISTRY:
        raise ValueError(f"{cfg_file} names architecture {arch!r}, which SAELens does not know; use one of "
                         f"{sorted(SAE_CLASS_REGISTRY)}")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the SAE folder {folder} holds a cfg.json but no weights")
    try:
        return SAE.load_from_disk(str(folder), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is truncated or corrupt ({type(err).__name__}: {err}); retrain the SAE "
                         "(notebook 01) or restore the file") from err
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{weights} does not match {cfg_file} (d_in={spec.get('d_in')}, "
                         f"d_sae={spec.get('d_sae')}): {type(err).__name__}: {str(err)[:300]}") from err


def _check_recipe(folder: Path, sae) -> None:
    """An SAE in a folder of per-hook SAEs must be the one its ``training.json`` recipe describes."""
    recipe_file = folder.parent / "training.json"
    if not recipe_file.is_file():
        return
    try:
        cfg = json.loads(recipe_file.read_text()).get("config", {})
    except json.JSONDecodeError as err:
        raise ValueError(f"{recipe_file} is not valid JSON ({err})") from err
    for key, have in (("d_sae", sae.cfg.d_sae), ("architecture", sae.cfg.architecture())):
        want = cfg.get(key)
        if key == "architecture" and want == "batchtopk":
            want = "jumprelu"  # SAELens saves a BatchTopK SAE as the JumpReLU SAE it is at inference
        if want is not None and want != have:
            raise ValueError(f"the SAE in {folder} has {key}={have!r} but {recipe_file} says {key}={want!r}: "
                             "the folder holds another SAE than its recipe describes; retrain (notebook 01) or "
                             "restore the matching folder")


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


