"""The suite's headline figures against their targets, from committed results.

``results/targets.yaml`` lists, per profile, the figures a reader looks for: the notebook, the metric key, a target
(``">= 0.90"``, ``"> max(maxact_precision_at_10, logitlens_precision_at_10)"``, ``"<= 0.2 * asr_before"``) and the
issue it comes from. :func:`evaluate` reads ``results/<profile>/<notebook>.metrics.json`` (``run`` reads
``results/<profile>/run_seconds.json``) and says for each row what was measured and whether the target is met;
:func:`markdown_table` is the README's results table, which ``python -m steerlab.report --write-readme`` writes
between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` markers, and a test checks that the committed
README equals what this module generates, so the table cannot drift from ``results/``.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from steerlab.models.paths import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "results"
TARGETS_FILE = RESULTS_DIR / "targets.yaml"
README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_FUNCS = {"max": max, "min": min, "mean": lambda *xs: sum(xs) / len(xs)}


@dataclass(frozen=True)
class Row:
    """One headline figure: where it is measured, its target and the outcome."""

    profile: str
    notebook: str
    key: str
    target: str
    issue: int | None
    label: str
    measured: Any = None  # the value, None when the results file or the key is missing
    bound: float | None = None  # the target's right-hand side evaluated on the same metrics
    met: bool | None = None  # None: no target, or nothing measured

    @property
    def status(self) -> str:
        if self.measured is None or (self.target and self.met is None):
            return "not measured"  # no figure, or a comparison whose other side was not measured
        if self.met is None:
            return "reported"
        return "met" if self.met else "missed"


def metrics_file(profile: str, notebook: str, results_dir: Path = RESULTS_DIR) -> Path:
    """Where a row's figure lives: ``<notebook>.metrics.json``, or ``run_seconds.json`` for ``run``."""
    name = "run_seconds.json" if notebook == "run" else f"{notebook}.metrics.json"
    return Path(results_dir) / profile / name


def _value(node: ast.AST, metrics: dict[str, Any], where: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in metrics:
            raise KeyError(node.id)
        return float(metrics[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, metrics, where)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        return _BIN[type(node.op)](_value(node.left, metrics, where), _value(node.right, metrics, where))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        args: list[float] = []
        for a in node.args:
            if isinstance(a, ast.Name) and any(c in a.id for c in "*?"):
                args += [float(metrics[k]) for k in sorted(fnmatch.filter(metrics, a.id))]
            elif isinstance(a, ast.Constant) and isinstance(a.value, str):  # "random_em_c_seed*"
                args += [float(metrics[k]) for k in sorted(fnmatch.filter(metrics, a.value))]
            else:
                args.append(_value(a, metrics, where))
        if not args:
            raise KeyError(ast.unparse(node))
        return float(_FUNCS[node.func.id](*args))
    raise ValueError(f"{where}: unsupported target expression {ast.unparse(node)!r} (numbers, metric keys, + - *, "
                     "max/min/mean)")


def parse_target(target: str, where: str = "target") -> tuple[str, ast.AST] | None:
    """``(op, expression)`` of a target string; None for an empty target. Errors name ``where``."""
    target = (target or "").strip()
    if not target:
        return None
    for op in (">=", "<=", ">", "<"):
        if target.startswith(op):
            try:
                return op, ast.parse(target[len(op):].strip(), mode="eval").body
            except SyntaxError as e:
                raise ValueError(f"{where}: target {target!r} is not an expression ({e.msg})") from None
    raise ValueError(f"{where}: target {target!r} must start with one of >=, <=, >, <")


def check(measured: Any, target: str, metrics: dict[str, Any], where: str = "target") -> tuple[float | None, bool | None]:
    """``(bound, met)`` of one figure: the target's right-hand side on ``metrics`` and whether ``measured`` meets
    it. ``(None, None)`` for an empty target or a figure that is not a finite number; a key the expression names
    that the metrics lack also gives ``(None, None)`` (the comparison is not measured)."""
    parsed = parse_target(target, where)
    if parsed is None or not isinstance(measured, (int, float)) or isinstance(measured, bool) \
            or not math.isfinite(measured):
        return None, None
    op, expr = parsed
    try:
        bound = _value(expr, metrics, where)
    except KeyError:
        return None, None
    return bound, bool(_OPS[op](float(measured), bound))


def load_targets(path: Path = TARGETS_FILE) -> dict[str, list[dict]]:
    """The target rows per profile; an unknown field or a malformed target is an error naming the row."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    fields = {"notebook", "key", "target", "issue", "label"}
    for profile, rows in spec.items():
        for i, r in enumerate(rows):
            where = f"{path}: {profile}[{i}]"
            if set(r) - fields or not {"notebook", "key"} <= set(r):
                raise ValueError(f"{where}: fields must be {sorted(fields)} with notebook and key (got {sorted(r)})")
            parse_target(r.get("target", ""), where)
    return spec


def evaluate(results_dir: Path = RESULTS_DIR, targets: Path = TARGETS_FILE) -> list[Row]:
    """Every target row with its measured value from ``results_dir``."""
    rows = []
    for profile, specs in load_targets(targets).items():
        cache: dict[str, dict] = {}
        for r in specs:
            f = metrics_file(profile, r["notebook"], results_dir)
            if f not in cache:
                cache[f] = json.loads(f.read_text()) if f.is_file() else {}
            rows.append(row(profile, r, cache[f], f"{targets}: {profile} {r['notebook']} {r['key']}"))
    return rows


def row(profile: str, spec: dict, metrics: dict[str, Any], where: str = "target") -> Row:
    """One target row of ``targets.yaml`` evaluated on a notebook's ``metrics``."""
    measured = metrics.get(spec["key"])
    bound, met = check(measured, spec.get("target", ""), metrics, where)
    return Row(profile, spec["notebook"], spec["key"], spec.get("target", "") or "", spec.get("issue"),
               spec.get("label", spec["key"]), measured, bound, met)


def notebook_rows(notebook: str, metrics: dict[str, Any], profile: str = "default",
                  targets: Path = TARGETS_FILE) -> list[Row]:
    """The target rows of one notebook (its stem, e.g. ``"03_steering"``) evaluated on a run's ``metrics``: the
    rows of ``profile`` in ``targets.yaml``, else the default profile's (a smoke or manual run is compared with
    the default's targets, which it is not sized to meet)."""
    specs = load_targets(targets)
    return [row(profile, r, metrics) for r in specs.get(profile, specs.get("default", []))
            if r["notebook"] == notebook]


def headline(metrics: dict[str, Any], n: int = 10) -> dict[str, Any]:
    """At most ``n`` metrics: those named by the ``headline`` list when the notebook wrote one, else the first."""
    keys = metrics.get("headline")
    keys = [k for k in keys if k in metrics] if isinstance(keys, list) else [k for k in metrics if k != "headline"]
    return {k: metrics[k] for k in keys[:n]}


def headline_table(notebook: str, metrics: dict[str, Any], profile: str = "default", extra: int = 6,
                   targets: Path = TARGETS_FILE):
    """A notebook's closing table, for a reader: its target rows (figure, key, target, measured, met or missed)
    and then up to ``extra`` more headline figures (the notebook's ``headline`` list, else its first keys),
    rounded by :func:`fmt`. A ``pandas.DataFrame`` indexed by the figure's label."""
    import pandas as pd

    rows = notebook_rows(notebook, metrics, profile, targets)
    seen = {r.key for r in rows}
    more = [k for k, v in headline(metrics, len(metrics)).items() if k not in seen and not isinstance(v, (list, dict))]
    table = [(r.label, r.key, target_text(r), fmt(r.measured), r.status) for r in rows]
    table += [(k, k, "–", fmt(metrics[k]), "") for k in more[:extra]]
    return pd.DataFrame(table, columns=["figure", "key", "target", "measured", ""]).set_index("figure")


def target_text(r: Row) -> str:
    """A row's target as a reader sees it: with the other side's value when the target names metric keys."""
    target = r.target or "–"
    if r.bound is not None and any(c.isalpha() for c in r.target):
        target = f"{target.split()[0]} {fmt(r.bound)}"
    return target


def fmt(v: Any) -> str:
    """A figure as a reader wants it: 3 significant digits (1000 and above as whole numbers, below 1e-12 as 0),
    integers as integers, None as a dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) < 1e-12:  # a difference of shares that is zero up to float rounding
            return "0"
        if abs(v) >= 1000:  # seconds, token counts: whole numbers
            return str(round(v))
        if v == int(v) and abs(v) >= 10:
            return str(int(v))
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: list[Row], results_dir: Path = RESULTS_DIR) -> str:
    """The README's results table: one row per headline figure (profile and notebook, key, target, measured,
    status; the rows' labels and target expressions are in ``targets.yaml``); a profile with no results folder is
    one line saying so."""
    out = ["| | figure | target | measured | |", "|---|---|---|---|---|"]
    for profile in dict.fromkeys(r.profile for r in rows):
        mine = [r for r in rows if r.profile == profile]
        if not (Path(results_dir) / profile).is_dir():
            out.append(f"| {profile} | {len(mine)} targets in `results/targets.yaml` | | | not run yet |")
            continue
        for r in mine:
            target = target_text(r).replace("|", "\\|")  # the other side's value; its keys: targets.yaml
            status = {"met": "met", "missed": "**missed**"}.get(r.status, r.status)
            nb = r.notebook if r.notebook == "run" else r.notebook[:2]
            out.append(f"| {profile} {nb} | `{r.key}` | {target} | {fmt(r.measured)} | {status} |")
    return "\n".join(out)


def readme_section(rows: list[Row], results_dir: Path = RESULTS_DIR) -> str:
    """The generated block, markers included."""
    met = sum(r.status == "met" for r in rows)
    judged = sum(r.status in ("met", "missed") for r in rows)
    return (f"{BEGIN}\n{markdown_table(rows, results_dir)}\n\n{met} of {judged} measured targets met; generated by "
            f"`python -m steerlab.report --write-readme` from `results/` (targets: `results/targets.yaml`).\n{END}")


def replace_section(text: str, section: str) -> str:
    """``text`` with its marked results block replaced by ``section``; an error when the markers are missing."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README has no {BEGIN} ... {END} block for the results table")
    return text[:i] + section + text[j + len(END):]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true", help="rewrite README.md's results table")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="results folder (default: results/)")
    args = ap.parse_args(argv)
    rows = evaluate(args.results)
    if args.write_readme:
        README.write_text(replace_section(README.read_text(), readme_section(rows, args.results)))
        print(f"wrote the results table of {README} ({len(rows)} rows)")
    else:
        print(markdown_table(rows, args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
