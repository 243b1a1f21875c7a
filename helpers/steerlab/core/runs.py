"""Run folders: where a notebook writes its metrics, figures and checkpoint paths.

Each notebook writes into its ``run_dir`` parameter: ``metrics.json`` (flat ``{name: number | bool | str}``; an
optional ``headline`` list names the keys the pipeline prints), figures as PNG, and ``artefacts.json`` naming the
checkpoints it wrote or loaded, so a later notebook can find them.

The pipeline (``steerlab.pipeline``) runs a notebook into a fresh ``runs/<profile>/<stem>.running/`` folder that
replaces ``runs/<profile>/<stem>/`` only when the notebook succeeds; a failed run is kept as
``runs/<profile>/<stem>.failed/`` (with ``error.txt``) and the last good run stays current. Only the final name
``runs/<profile>/<stem>/`` is ever read by later notebooks. Within one run folder ``write_metrics`` and
``write_artefacts`` merge (a notebook may call them several times); a pipeline run starts from an empty folder, so
nothing is merged across runs. A manual run into a fixed folder (``runs/manual/...``) does merge into what the
folder already holds.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[3]
RUNNING_SUFFIX = ".running"  # <stem>.running/: the run in progress (becomes <stem>/ when it succeeds)
FAILED_SUFFIX = ".failed"    # <stem>.failed/: the last failed run, with error.txt


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


def _absolute(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    return p if p.is_absolute() else REPO_ROOT / p


def run_path(run_dir: str | Path) -> Path:
    """``run_dir`` as an absolute folder (relative paths are taken from the repository root), created."""
    p = _absolute(run_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


@contextlib.contextmanager
def atomic_folder(path: str | Path, keep: bool = True) -> Iterator[Path]:
    """A checkpoint folder written under a temporary sibling name that replaces ``path`` only on success.

    Yields ``<path>.tmp`` (with ``keep``, a fresh copy of what ``path`` holds, so files the block does not rewrite
    stay as they were). When the block returns, ``path`` is moved to ``<path>.old``, the new folder renamed into
    place and the old one removed; when it raises, the temporary folder is removed and ``path`` is untouched, so
    an interrupted or failing save leaves the previous checkpoint loadable. A ``<path>.old`` left by a process
    killed between the two renames is put back first."""
    import shutil

    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if old.is_dir() and not path.exists():
        old.rename(path)
    shutil.rmtree(tmp, ignore_errors=True)
    if keep and path.is_dir():
        shutil.copytree(path, tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as JSON through a temporary file and an atomic rename: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Merge ``metrics`` into ``run_dir/metrics.json`` (numbers, bools, strings; NaN becomes null), atomically.

    Merging is within one run folder only: the pipeline gives every run a fresh, empty folder."""
    path = run_path(run_dir) / "metrics.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: _clean(v) for k, v in metrics.items()})
    return _write_json(path, old)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/metrics.json`` ({} when the run wrote none; reading never creates the folder)."""
    path = _absolute(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_figure(fig, run_dir: str | Path, name: str) -> Path:
    """Save a matplotlib figure as ``run_dir/<name>.png``."""
    path = run_path(run_dir) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def final_run_dir(run_dir: str | Path) -> Path:
    """The folder a run will have once it succeeds: ``<stem>.running`` -> ``<stem>``; any other folder itself."""
    p = run_path(run_dir)
    return p.with_name(p.name[: -len(RUNNING_SUFFIX)]) if p.name.endswith(RUNNING_SUFFIX) else p


def _final_path(v: str | Path, running: Path, final: Path) -> str:
    """``v`` with a leading ``running`` folder replaced by ``final``, relative paths kept relative to the
    repository root (paths elsewhere unchanged)."""
    try:
        moved = final / _absolute(v).relative_to(running)
    except ValueError:
        return str(v)
    if Path(v).is_absolute():
        return str(moved)
    try:
        return str(moved.relative_to(REPO_ROOT))
    except ValueError:
        return str(moved)


def write_artefacts(run_dir: str | Path, **paths: str | Path) -> Path:
    """Record checkpoint paths (merged into ``run_dir/artefacts.json``, atomically).

    A path inside a ``<stem>.running`` folder is recorded where it will be once the run succeeds (``<stem>/...``),
    so a later notebook reading the artefacts of the current run finds it."""
    running = run_path(run_dir)
    final = final_run_dir(running)
    path = running / "artefacts.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: _final_path(v, running, final) for k, v in paths.items()})
    return _write_json(path, old)


def read_artefacts(run_dir: str | Path) -> dict[str, str]:
    """The checkpoint paths an earlier notebook recorded in ``run_dir/artefacts.json`` ({} when it recorded none).

    Raises FileNotFoundError when ``run_dir`` does not exist (that notebook has not run, or never succeeded)."""
    folder = _absolute(run_dir)
    if not folder.is_dir():
        failed = folder.with_name(folder.name + FAILED_SUFFIX)
        hint = f"; its last run failed, see {failed / 'error.txt'}" if failed.is_dir() else ""
        raise FileNotFoundError(f"no run folder {folder}: run that notebook first (make run or --only){hint}")
    path = folder / "artefacts.json"
    return json.loads(path.read_text()) if path.exists() else {}
