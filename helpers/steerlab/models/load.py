"""``load_model``: one entry point for every model steerlab studies.

All TransformerLens calls of steerlab that build or load a model live in ``steerlab.models``, so a move to
TL 4's ``TransformerBridge`` touches one package.
"""

from __future__ import annotations

from pathlib import Path

from transformer_lens import HookedTransformer

from steerlab.models.paths import DATA_DIR
from steerlab.models.tinyworld import TINYWORLD_DIR, load_tinyworld

OFFLINE_DEFAULT = "tinyworld"


def load_model(name: str = OFFLINE_DEFAULT, device: str = "cpu", **from_pretrained_kwargs) -> HookedTransformer:
    """Load a model by name.

    ``"tinyworld"`` (or a path to a tinyworld checkpoint folder) loads offline from ``data/``. Any other
    name goes to ``HookedTransformer.from_pretrained`` (for example ``"gpt2-small"``); when the model hub
    cannot be reached the error says so and names the offline default.
    """
    if name == OFFLINE_DEFAULT or Path(name).is_dir():
        model, world = load_tinyworld(TINYWORLD_DIR if name == OFFLINE_DEFAULT else name)
        model.world = world
        return model.to(device)
    try:
        return HookedTransformer.from_pretrained(name, device=device, **from_pretrained_kwargs)
    except (OSError, ConnectionError, RuntimeError, ValueError) as err:
        if isinstance(err, ValueError) and "not found" in str(err).lower() and "official" in str(err).lower():
            raise ValueError(f"{name!r} is not a model TransformerLens knows; the valid names are "
                             "transformer_lens.loading.OFFICIAL_MODEL_NAMES (or use 'tinyworld')") from err
        raise ConnectionError(
            f"could not load {name!r} from the model hub ({type(err).__name__}: {err}). The hub is not "
            f"reachable from here or the weights are not cached; use the offline default "
            f"load_model({OFFLINE_DEFAULT!r}) or set HF_HOME to a cache that holds {name!r}.") from err
