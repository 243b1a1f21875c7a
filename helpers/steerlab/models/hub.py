"""Models by TransformerLens name (``gpt2-small``, ``gemma-2-2b``, ...) and local Hugging Face folders.

steerlab never downloads on a default path: a hub name loads from the local Hugging Face cache with the hub
switched off (so an uncached model fails at once, with no retry loop), unless ``allow_download=True``. A
local folder saved with ``save_pretrained`` (``config.json`` + weights + tokenizer) loads the same way the
registry models do (:func:`steerlab.models.gguf.load_hf`), given the TransformerLens name of its architecture.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from steerlab.models.gguf import DTYPES, load_hf, offline


def load_hub(name: str, device: str = "cpu", dtype: str = "float32", allow_download: bool = False, **kwargs):
    """``HookedTransformer.from_pretrained(name)`` from the local cache (or the hub with ``allow_download``)."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_official_model_name

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; use one of {DTYPES}")
    try:
        get_official_model_name(name)
    except ValueError as err:
        if "/" in name or "\\" in name or name.endswith(".gguf"):  # meant as a path: say that it does not exist
            raise FileNotFoundError(f"no model at {name!r}: that path does not exist (from {Path.cwd()}), and it is "
                                    "not a model TransformerLens knows either (transformer_lens.loading."
                                    "OFFICIAL_MODEL_NAMES); check the path") from err
        raise ValueError(f"{name!r} is neither a steerlab model ('tinyworld', 'gemma-3-270m'), a path to a model "
                         "folder or .gguf file, nor a model TransformerLens knows (see "
                         "transformer_lens.loading.OFFICIAL_MODEL_NAMES)") from err
    ctx = contextlib.nullcontext() if allow_download else offline()
    try:
        with ctx:
            return HookedTransformer.from_pretrained(name, device=device, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ConnectionError, RuntimeError, ValueError) as err:
        how = ("the hub could not be reached" if allow_download else
               "steerlab loads hub models from the local Hugging Face cache only, and it does not hold them")
        if allow_download and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            how = "HF_HUB_OFFLINE is set, so the hub is not asked, and the local cache does not hold them"
        raise ConnectionError(
            f"could not load {name!r}: {how} ({type(err).__name__}: {str(err)[:200]}). Use the offline default "
            "load_model('tinyworld') or load_model('gemma-3-270m'), set HF_HOME to a cache that holds "
            f"{name!r}, or pass allow_download=True where the hub is reachable.") from err


def load_folder(folder: str | Path, tl_name: str | None = None, device: str = "cpu", dtype: str = "float32"):
    """A local Hugging Face model folder (``save_pretrained``: ``config.json``, weights, tokenizer) as a
    ``HookedTransformer``, without weight processing (logits equal the HF model's). TransformerLens builds the
    config from the folder's ``config.json`` (any architecture it converts); ``tl_name`` instead takes the config
    of that TransformerLens name."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    folder = Path(folder)
    cfg_file = folder / "config.json"
    try:
        json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg_file} is missing or malformed ({err}): a model folder is written by "
                         "save_pretrained") from err
    hf, tok = load_hf(folder, dtype)
    torch_dtype = getattr(torch, dtype)
    with offline():
        if tl_name is not None:
            model = HookedTransformer.from_pretrained_no_processing(tl_name, hf_model=hf, tokenizer=tok,
                                                                    device=device, dtype=torch_dtype)
        else:
            try:
                cfg = loading.get_pretrained_model_config(str(folder), hf_cfg=hf.config.to_dict(), fold_ln=False,
                                                          device=device, dtype=torch_dtype)
            except (KeyError, NotImplementedError, ValueError) as err:
                raise ValueError(f"TransformerLens cannot convert the architecture of {cfg_file} ({err}); pass "
                                 "tl_name= a TransformerLens model of the same architecture") from err
            state = loading.get_pretrained_state_dict(str(folder), cfg, hf, dtype=torch_dtype)
            model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
            model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                              center_unembed=False, fold_value_biases=False,
                                              refactor_factored_attn_matrices=False)
            model.to(device)
    model.cfg.model_name = folder.name
    model.eval()
    return model
