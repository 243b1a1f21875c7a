"""Models steerlab studies: the tinyworld checkpoint (``tinyworld``), registry-shipped GGUF models (``gguf``),
TransformerLens hub names (``hub``), and ``load_model``, the one entry point (``load``).

``from steerlab.models import load_model``.
"""

from steerlab.models.load import OFFLINE_DEFAULT, REAL_DEFAULT, load_model, resolve_device
from steerlab.models.paths import DATA_DIR
from steerlab.models.tinyworld import TINYWORLD_DIR, ModelConfig, build_model, load_tinyworld, save_checkpoint

__all__ = ["DATA_DIR", "OFFLINE_DEFAULT", "REAL_DEFAULT", "resolve_device", "TINYWORLD_DIR", "ModelConfig", "build_model", "load_model",
           "load_tinyworld", "save_checkpoint"]
