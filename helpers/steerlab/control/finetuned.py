"""Fine-tuned copies of the LM (the RLVR baseline) as checkpoints: saved beside the control policies, loaded back.

An RLVR model is the frozen model's architecture with other weights, so it is stored as one safetensors file of
its state dict plus a JSON sidecar with the base model's fingerprint (``<name>.safetensors``,
``<name>.json``). :func:`load_finetuned` refuses a file of another architecture or one fine-tuned from another
base model, naming the file; :func:`save_finetuned` writes atomically, so a failed save leaves the previous file.
Notebook 04 loads the shipped ones (``data/control/rlvr_<task>.safetensors``) unless ``retrain`` is set, so the
default run does not spend most of its time re-training the same baseline.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from steerlab.core.activations import fingerprint


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_finetuned(tuned, base, path: str | Path, **extra) -> Path:
    """Write ``tuned``'s weights to ``path`` (``.safetensors``) and ``<path>.json`` (the fingerprint of ``base``'s
    unembedding and ``extra``, e.g. the training config), each through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in tuned.state_dict().items()}, str(tmp))
    meta = _sidecar(path).with_name(_sidecar(path).name + ".tmp")
    meta.write_text(json.dumps({"base_fingerprint": fingerprint(base.W_U), **extra}, indent=1, default=str))
    tmp.replace(path)
    meta.replace(_sidecar(path))
    return path


def load_finetuned(base, path: str | Path):
    """A copy of ``base`` with the weights in ``path``; an error naming the file when it is missing, corrupt, of
    another architecture, or (per its sidecar) fine-tuned from another base model."""
    path = Path(path)
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path} is missing or not a safetensors checkpoint ({err}); retrain with retrain=True") \
            from err
    side = _sidecar(path)
    if side.is_file():
        want = json.loads(side.read_text()).get("base_fingerprint")
        if want and want != fingerprint(base.W_U):
            raise ValueError(f"{path} was fine-tuned from another model ({side}: base fingerprint {want}); load the "
                             "model it came from or retrain with retrain=True")
    expected = base.state_dict()
    bad = sorted(k for k in expected if k not in state or state[k].shape != expected[k].shape)
    if bad or set(state) - set(expected):
        raise ValueError(f"{path} does not fit this model's architecture: mismatched or missing tensors {bad[:5]}, "
                         f"unexpected {sorted(set(state) - set(expected))[:5]}")
    tuned = copy.deepcopy(base)
    tuned.load_state_dict(state)
    return tuned.eval()
