"""Where steerlab keeps its shipped data: one ``DATA_DIR`` for the whole package."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = REPO_ROOT / "data"
CACHE_DIR = REPO_ROOT / ".cache"  # ignored by git: models built at setup (dequantized GGUF weights)
