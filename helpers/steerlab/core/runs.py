"""Run folders: where a notebook writes its metrics, figures and checkpoint paths.

Each notebook writes into ``runs/<profile>/<notebook-stem>/`` (the ``run_dir`` parameter):
``metrics.json`` (flat ``{name: number | bool | str}``), figures as PNG, and ``artefacts.json`` naming the
checkpoints it wrote or loaded, so a later notebook can find them.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic torch kernels inside the block, the previous setting restored on exit.

    With several CPU threads some backward kernels (index accumulation, as in an embedding's gradient) add in an
    order that varies from run to run: two RLVR runs with one seed differ by ~1e-4 in their weights after four
    updates, then sample different answers and end far apart (held-out accuracy 0.53 against 0.57). Inside this
    block they are bit-identical, and independent of the thread count in our tests. Ops without a deterministic
    kernel warn instead of failing (``warn_only``)."""
    import torch

    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def run_path(run_dir: str | Path) -> Path:
    """``run_dir`` as an absolute folder (relative paths are taken from the repository root), created."""
    p = Path(run_dir)
    p = p if p.is_absolute() else REPO_ROOT / p
    p.mkdir(parents=True, exist_ok=True)
    return p


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` into ``run_dir/metrics.json`` (numbers, bools, strings; NaN becomes null)."""
    path = run_path(run_dir) / "metrics.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: _clean(v) for k, v in metrics.items()})
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(old, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = run_path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_figure(fig, run_dir: str | Path, name: str) -> Path:
    """Save a matplotlib figure as ``run_dir/<name>.png``."""
    path = run_path(run_dir) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_artefacts(run_dir: str | Path, **paths: str | Path) -> Path:
    """Record checkpoint paths (merged into ``run_dir/artefacts.json``)."""
    path = run_path(run_dir) / "artefacts.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: str(v) for k, v in paths.items()})
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    return path


def read_artefacts(run_dir: str | Path) -> dict[str, str]:
    path = run_path(run_dir) / "artefacts.json"
    return json.loads(path.read_text()) if path.exists() else {}
