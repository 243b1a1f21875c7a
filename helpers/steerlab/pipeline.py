"""Execute the notebooks in order with papermill (what ``make run`` calls).

``params/<profile>.yaml`` holds a ``common`` section and one section per notebook stem (``00_tinyworld: {...}``).
The whole profile is checked against the notebooks' ``parameters`` cells before any notebook starts; every problem
is a ``ProfileError`` naming the file, the section and the key, and saying what to fix:

- a section is ``common`` or a notebook stem; a key is a name assigned in that notebook's ``parameters`` cell
  (``run_dir`` and ``profile`` are set by the pipeline); a key appears once per section;
- a value has the type of the default (bool, int, float, str, list, dict; lists element by element when the
  default's elements share one type). An int is accepted where a float is expected, and so is a numeric string:
  YAML reads ``1e-3`` (no dot) as the string "1e-3", which is converted to the float 0.001;
- a ``common`` key must be a parameter of at least one notebook and is given only to the notebooks that have it
  (papermill would warn about the others); a notebook's own section overrides it.

Each notebook runs into a fresh ``runs/<profile>/<stem>.running/`` (its ``run_dir``), which replaces
``runs/<profile>/<stem>/`` only when the notebook succeeds. A failed notebook is kept as
``runs/<profile>/<stem>.failed/`` (the executed notebook and ``error.txt``) beside the last good run, which stays
current, untouched; the pipeline then stops, since later notebooks read earlier ones' outputs from
``runs/<profile>/<stem>/``. ``runs/<profile>/index.html`` links every run rendered to HTML (offline: no CDN) and
marks failed ones. The last lines printed are a table of each notebook's headline metrics and the wall time.

Usage::

    python -m steerlab.pipeline --profile default [--only 00_tinyworld 01_train_sae]
"""

from __future__ import annotations

import argparse
import ast
import difflib
import html
import json
import logging
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from steerlab.core.runs import FAILED_SUFFIX, REPO_ROOT, RUNNING_SUFFIX, read_metrics

log = logging.getLogger(__name__)
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PARAMS_DIR = REPO_ROOT / "params"
RUNS_DIR = REPO_ROOT / "runs"
RESERVED = ("run_dir", "profile")  # parameters every notebook has, set by the pipeline and never by a profile
HEADLINE_KEYS = 10  # metrics per notebook in the final table (a metrics "headline" list picks them)


class ProfileError(ValueError):
    """A parameter profile that cannot run; the message names the file, the section, the key and the fix."""


class NotebookFailed(RuntimeError):
    """A notebook raised. Its run is kept in ``failed_dir`` (``error.txt``); the previous good run is untouched."""

    def __init__(self, message: str, failed_dir: Path):
        super().__init__(message)
        self.failed_dir = failed_dir


# ---------------------------------------------------------------------------------------------- profiles


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping is an error (PyYAML keeps the last)."""

    def construct_document(self, node):
        _check_unique(node, [])
        return super().construct_document(node)


def _check_unique(node: yaml.Node, where: list[str]) -> None:
    """Raise ProfileError on a key that appears twice in one mapping, naming the file, its section and lines."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in seen:
                inside = f"section {where[0]!r}, " if where else "top level (sections), "
                raise ProfileError(f"{key_node.start_mark.name}, line {line}: {inside}key {key!r} appears twice "
                                   f"(first on line {seen[key]}); keep one of them")
            seen[key] = line
            _check_unique(value_node, [*where, key])
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique(item, where)


def notebooks_in(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline's notebooks, ``NN_name.ipynb``, in run order."""
    return sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """``{name: default}`` of the cell tagged ``parameters`` (a default that is not a literal maps to None: any
    value is accepted for it)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ProfileError(f"{notebook}: needs exactly one cell tagged 'parameters', has {len(tagged)}")
    src = tagged[0]["source"]
    defaults: dict[str, Any] = {}
    for node in ast.parse(src if isinstance(src, str) else "".join(src)).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in (t for t in targets if isinstance(t, ast.Name)):
            try:
                defaults[t.id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError):
                defaults[t.id] = None
    return defaults


_KINDS = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), ((list, tuple), "list"), (dict, "dict"))


def _kind(v: Any) -> str | None:
    return next((name for t, name in _KINDS if isinstance(v, t)), None)  # bool before int: True is an int


def _coerce(value: Any, default: Any, where: str, nb: str) -> Any:
    """``value`` checked against the type of ``default``: returned as is, except ints and numeric strings where a
    float is expected (made floats). ``where`` names the value and ``nb`` the notebook in the error message."""
    want, got = _kind(default), _kind(value)
    if want is None:
        return value
    if value is None:
        raise ProfileError(f"{where} has no value; give {_a(want)} ({nb} defaults to {default!r})")
    if want == "float" and got in ("int", "float"):
        return float(value)
    if want == "float" and got == "str":
        try:
            return float(value)
        except ValueError:
            pass
    if want == got and want == "list":
        kinds = {("float" if k == "int" else k) for k in map(_kind, default)}
        if len(kinds) == 1:  # one element type in the default: check every element (a float one if any is)
            example = next((d for d in default if _kind(d) == "float"), default[0])
            return [_coerce(v, example, f"{where}[{i}]", nb) for i, v in enumerate(value)]
        return list(value)
    if want == got:
        return value
    fix = " (a number such as 0.001 or 1.0e-3)" if want == "float" else ""
    raise ProfileError(f"{where} = {value!r} is {_a(got)}, but {nb} expects {_a(want)}{fix} "
                       f"(its default is {default!r}); change the value")


def _a(kind: str | None) -> str:
    return "None" if kind is None else ("an " if kind[0] in "aeiou" else "a ") + kind


def _unknown(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return (f"did you mean {close[0]!r}? " if close else "") + f"valid: {', '.join(sorted(valid))}"


def check_profile(spec: Any, notebooks: list[Path], source: str | Path) -> dict[str, dict]:
    """``spec`` (a parsed profile) checked against ``notebooks``' parameters cells; returns it with numeric
    strings converted. Raises ProfileError listing every problem, each naming ``source``, the section and the key."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ProfileError(f"{source}: must map 'common' and notebook stems to parameter mappings, "
                           f"not {type(spec).__name__}")
    defaults = {nb.stem: notebook_defaults(nb) for nb in notebooks}
    problems, out = [], {}
    for section, keys in spec.items():
        if keys is None:
            keys = {}
        if section != "common" and section not in defaults:
            problems.append(f"unknown section {section!r}: neither 'common' nor a notebook; "
                            f"{_unknown(str(section), ['common', *defaults])}")
            continue
        if not isinstance(keys, dict):
            problems.append(f"section {section!r} must be a mapping of parameters, not {type(keys).__name__}")
            continue
        out[section] = {}
        for key, value in keys.items():
            where = f"section {section!r}, key {key!r}"
            have = [s for s, d in defaults.items() if key in d] if section == "common" else \
                [section] if key in defaults[section] else []
            if key in RESERVED:
                problems.append(f"{where}: {key} is set by the pipeline (runs/<profile>/<stem>); remove it")
            elif not have:
                valid = sorted({k for d in defaults.values() for k in d} if section == "common" else defaults[section])
                scope = "no notebook has it" if section == "common" else f"not a parameter of {section}.ipynb"
                problems.append(f"{where}: {scope}; {_unknown(str(key), [k for k in valid if k not in RESERVED])}")
            else:
                try:
                    for s in have:  # a common key is checked against every notebook that takes it
                        out[section][key] = _coerce(value, defaults[s][key], where, f"{s}.ipynb")
                except ProfileError as e:
                    problems.append(str(e))
    if problems:
        raise ProfileError(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return out


def profile_path(profile: str | Path, params_dir: Path = PARAMS_DIR) -> Path:
    """``params/<profile>.yaml``, or ``profile`` itself when it is a path to a ``.yaml`` file."""
    p = Path(profile)
    return p if p.suffix in (".yaml", ".yml") else Path(params_dir) / f"{profile}.yaml"


def load_profile(profile: str | Path, *, params_dir: Path = PARAMS_DIR,
                 notebook_dir: Path = NOTEBOOK_DIR) -> dict[str, dict]:
    """Read and check ``params/<profile>.yaml`` (or a ``.yaml`` path) against the notebooks in ``notebook_dir``.

    Raises FileNotFoundError (listing the profiles that exist) or ProfileError (see the module docstring)."""
    path = profile_path(profile, params_dir)
    if not path.is_file():
        known = sorted(p.stem for p in Path(params_dir).glob("*.yaml"))
        raise FileNotFoundError(f"no parameter profile {path}; known profiles: {known}")
    try:
        with path.open() as f:  # a named stream: error marks carry the file name
            spec = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML: {e}") from e
    return check_profile(spec, notebooks_in(notebook_dir), path)


def notebook_parameters(spec: dict[str, dict], notebook: Path, profile: str, run_dir: str) -> dict:
    """Parameters for one notebook: the ``common`` keys it has, then its own section (checked), then ``run_dir``
    and ``profile``."""
    notebook = Path(notebook)
    names = notebook_defaults(notebook)
    common = {k: v for k, v in (spec.get("common") or {}).items() if k in names}
    checked = check_profile({"common": common, notebook.stem: spec.get(notebook.stem) or {}}, [notebook],
                            f"profile {profile}")
    return {**checked["common"], **checked[notebook.stem], "run_dir": run_dir, "profile": profile}


# ---------------------------------------------------------------------------------------------- run folders

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_text(e: BaseException) -> str:
    """The error's traceback as plain text, its last line ``Name: message``."""
    tb = getattr(e, "traceback", None)
    if isinstance(tb, list) and hasattr(e, "ename"):  # papermill's PapermillExecutionError: the kernel's traceback
        return _ANSI.sub("", "\n".join(tb)).rstrip() + f"\n\n{e.ename}: {e.evalue}\n"
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip() + "\n"


def last_error_line(failed_dir: Path) -> str:
    lines = [ln for ln in (Path(failed_dir) / "error.txt").read_text().splitlines() if ln.strip()] \
        if (Path(failed_dir) / "error.txt").is_file() else []
    return lines[-1] if lines else "unknown error (no error.txt)"


def _recover(final: Path) -> None:
    """Undo a swap cut short (``<stem>.old`` left by a crash between the two renames of ``_replace``)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)


def _replace(running: Path, final: Path) -> None:
    """``running`` becomes ``final``; the previous ``final`` is deleted only once the new one is in place."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)
    running.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _cell_timeout() -> int | None:
    """Seconds a cell may run (``STEERLAB_CELL_TIMEOUT``; unset: no limit). The test suite sets it so that a
    kernel that stops answering fails its notebook instead of blocking the run."""
    v = os.environ.get("STEERLAB_CELL_TIMEOUT", "")
    return int(v) if v.strip() else None


def execute(notebook: Path, profile: str, spec: dict[str, dict], kernel: str = "python3", *,
            runs_root: Path | None = None) -> Path:
    """Run one notebook (any path) with papermill and return the executed notebook, ``<root>/<profile>/<stem>/
    <name>.ipynb``, whose folder holds its ``metrics.json``. ``runs_root`` defaults to the repository's ``runs/``.

    The notebook runs into ``<stem>.running/``, which replaces ``<stem>/`` on success (and removes a stale
    ``<stem>.failed/``). On failure it becomes ``<stem>.failed/`` with ``error.txt``, ``<stem>/`` is left as it
    was, and NotebookFailed is raised (KeyboardInterrupt and the like are kept the same way, then re-raised)."""
    import papermill as pm

    notebook = Path(notebook).resolve()
    base = Path(runs_root).resolve() / profile if runs_root is not None else RUNS_DIR / profile
    stem = notebook.stem
    final, running, failed = base / stem, base / (stem + RUNNING_SUFFIX), base / (stem + FAILED_SUFFIX)
    run_dir = str(running.relative_to(REPO_ROOT)) if running.is_relative_to(REPO_ROOT) else str(running)
    parameters = notebook_parameters(spec, notebook, profile, run_dir)
    _recover(final)
    if running.exists():  # left by a run that was killed: never let its files mix into this one
        shutil.rmtree(running)
    running.mkdir(parents=True)
    try:
        pm.execute_notebook(str(notebook), str(running / notebook.name), parameters=parameters,
                            kernel_name=kernel, cwd=str(REPO_ROOT), progress_bar=False, log_output=False,
                            execution_timeout=_cell_timeout())
    except BaseException as e:
        if failed.exists():
            shutil.rmtree(failed)
        running.rename(failed)
        (failed / "error.txt").write_text(_error_text(e))
        if not isinstance(e, Exception):
            raise
        kept = f"; the last good run {final} is unchanged" if final.exists() else ""
        raise NotebookFailed(f"{notebook.name} failed ({last_error_line(failed)}); see {failed / 'error.txt'} "
                             f"and the executed notebook in {failed}{kept}", failed) from e
    _replace(running, final)
    if failed.exists():
        shutil.rmtree(failed)
    return final / notebook.name


# ---------------------------------------------------------------------------------------------- report

# Each executed notebook is exported by steerlab.viz.export: nbconvert's lab template without its CDN loaders,
# formulas typeset by the MathJax copied into runs/<profile>/.static/, widgets as static snapshots of their last
# state; the page makes no network request. circuitsvis views inline their own script (steerlab.viz).
STATIC_DIR = ".static"  # runs/<profile>/.static/: files the HTML pages load (MathJax); hidden, so `make results`'s
# loop over runs/<profile>/*/ (run folders) does not see it
_STEM = re.compile(r"[0-9][0-9]_")  # run folders of pipeline notebooks (NN_name)


def _page(folder: Path) -> Path | None:
    """The HTML page of the executed notebook in ``folder`` (else the notebook itself, else None)."""
    nbs = sorted(folder.glob("*.ipynb"))
    return next((p for p in (nb.with_suffix(".html") for nb in nbs) if p.is_file()), nbs[0] if nbs else None)


def render_index(profile: str, executed: list[Path], *, runs_root: Path | None = None) -> Path:
    """Render each notebook of ``executed`` to HTML and write ``<root>/<profile>/index.html``, which lists every
    run folder of the profile: its metrics, and for a notebook whose last run failed a "failed" marker with the
    error's last line and links to the failed notebook and the last good run. The pages load MathJax from
    ``<root>/<profile>/.static/`` (:func:`steerlab.viz.export.write_html`)."""
    from steerlab.viz import export

    base = Path(runs_root).resolve() / profile if runs_root is not None else RUNS_DIR / profile
    base.mkdir(parents=True, exist_ok=True)
    for nb in executed:
        export.write_html(Path(nb), base / STATIC_DIR)
    stems = sorted({d.name.removesuffix(FAILED_SUFFIX) for d in base.iterdir() if d.is_dir()
                    and _STEM.match(d.name) and not d.name.endswith((RUNNING_SUFFIX, ".old"))})
    rows = []
    for stem in stems:
        final, failed = base / stem, base / (stem + FAILED_SUFFIX)
        good = _page(final) if final.is_dir() else None
        title = f"<a href='{stem}/{good.name}'>{html.escape(stem)}</a>" if good else html.escape(stem)
        row = f"<h2>{title}</h2>"
        if failed.is_dir():
            bad = _page(failed)
            link = f" <a href='{failed.name}/{bad.name}'>failed notebook</a>" if bad else ""
            last = "the run below is the last good one" if final.is_dir() else "no good run yet"
            row += (f"<p class='failed' style='color:#b00000'><strong>FAILED</strong>: "
                    f"<code>{html.escape(last_error_line(failed))}</code>;{link} "
                    f"(<a href='{failed.name}/error.txt'>error.txt</a>); {last}</p>")
        question = _question(final) if final.is_dir() else ""
        if question:
            row += f"<p class='question'><strong>Question.</strong> {html.escape(question)}</p>"
        metrics = read_metrics(final) if final.is_dir() else {}
        row += _metrics_html(profile, stem, metrics)
        if final.is_dir():
            row += "".join(f"<figure><img src='{stem}/{png.name}' alt='{html.escape(png.stem)}' "
                           f"style='max-width:100%'><figcaption>{html.escape(png.name)}</figcaption></figure>"
                           for png in sorted(final.glob("*.png")))
        rows.append(row)
    index = base / "index.html"
    index.write_text(f"<!doctype html><meta charset='utf-8'><title>steerlab {html.escape(profile)}</title>"
                     f"<h1>steerlab run: {html.escape(profile)}</h1>{''.join(rows)}")
    return index


_QUESTION = re.compile(r"\*\*Question\.\*\*\s*(.+?)(?:\n\s*\n|$)", re.S)


def _question(folder: Path) -> str:
    """The question a notebook answers: the ``**Question.**`` paragraph of its first markdown cell."""
    nbs = sorted(folder.glob("*.ipynb"))
    if not nbs:
        return ""
    try:
        cells = json.loads(nbs[0].read_text())["cells"]
    except (ValueError, KeyError):
        return ""
    first = next(("".join(c["source"]) for c in cells if c.get("cell_type") == "markdown"), "")
    m = _QUESTION.search(first)
    return " ".join(m.group(1).split()).replace("*", "") if m else ""


def _metrics_html(profile: str, stem: str, metrics: dict[str, Any]) -> str:
    """A notebook's figures for the report page: its targets (``results/targets.yaml``, this profile's rows, else
    the default's) with met / missed, its headline figures rounded, and every metric folded away."""
    from steerlab import report

    if not metrics:
        return "<p>(no metrics)</p>"
    rows = report.notebook_rows(stem, metrics, profile)
    out = ""
    if rows:
        cells = []
        for r in rows:
            colour = {"met": "#060", "missed": "#b00000"}.get(r.status, "#555")
            cells.append(f"<tr><td>{html.escape(r.label)}</td><td><code>{html.escape(r.key)}</code></td>"
                         f"<td>{html.escape(report.target_text(r))}</td><td>{report.fmt(r.measured)}</td>"
                         f"<td style='color:{colour}'>{r.status}</td></tr>")
        out += ("<table><tr><th>figure</th><th>key</th><th>target</th><th>measured</th><th></th></tr>"
                + "".join(cells) + "</table>")
    top = headline(metrics)
    out += "<p>" + ", ".join(f"<code>{html.escape(k)}</code> {html.escape(report.fmt(v))}" for k, v in top.items()) + "</p>"
    out += ("<details><summary>all metrics</summary><ul>" + "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(report.fmt(v) if not isinstance(v, (list, dict)) else json.dumps(v))}</li>"
        for k, v in metrics.items()) + "</ul></details>")
    return out


def headline(metrics: dict[str, Any], n: int = HEADLINE_KEYS) -> dict[str, Any]:
    """:func:`steerlab.report.headline` (imported here lazily: ``steerlab.report`` loads the model package)."""
    from steerlab import report

    return report.headline(metrics, n)


def _fmt(v: Any) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def summary_table(rows: list[tuple[str, dict[str, Any] | str]]) -> str:
    """``(stem, metrics or a status line)`` rows as a plain-text table of headline metrics."""
    lines = [f"{'notebook':22s} {'metric':40s} value"]
    for stem, what in rows:
        items = list(headline(what).items()) if isinstance(what, dict) else [(what, "")]
        for i, (k, v) in enumerate(items or [("(no metrics)", "")]):
            lines.append(f"{stem if i == 0 else '':22s} {k:40s} {_fmt(v) if v != '' else ''}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", help="params/<profile>.yaml, or a path to a .yaml file")
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all, in order)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    ap.add_argument("--runs-root", type=Path, default=None, help="where run folders go (default: runs/)")
    ap.add_argument("--notebook-dir", type=Path, default=NOTEBOOK_DIR, help="folder of NN_*.ipynb notebooks")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    notebooks = notebooks_in(args.notebook_dir)
    stems = [n.stem for n in notebooks]
    if args.only is not None and not args.only:
        ap.error(f"--only needs at least one notebook stem (e.g. --only {stems[0] if stems else '00_tinyworld'}); "
                 f"notebooks: {', '.join(stems)}")
    try:
        spec = load_profile(args.profile, notebook_dir=args.notebook_dir)
    except (ProfileError, FileNotFoundError) as e:
        raise SystemExit(f"steerlab.pipeline: error: {e}") from None
    profile = profile_path(args.profile).stem
    if args.only:
        unknown = [s for s in args.only if s not in stems]
        if unknown:
            raise SystemExit(f"steerlab.pipeline: error: --only names unknown notebooks {unknown}; "
                             f"{_unknown(unknown[0], stems)}")
        notebooks = [n for n in notebooks if n.stem in args.only]
    executed, rows, failure, seconds = [], [], None, {}
    for nb in notebooks:
        if failure is not None:
            rows.append((nb.stem, "not run: an earlier notebook failed"))
            continue
        log.info("running %s (profile %s)", nb.name, profile)
        t0 = time.monotonic()
        try:
            out = execute(nb, profile, spec, args.kernel, runs_root=args.runs_root)
            seconds[nb.stem] = round(time.monotonic() - t0, 1)
        except NotebookFailed as e:
            failure = e
            if (e.failed_dir / nb.name).is_file():
                executed.append(e.failed_dir / nb.name)
            rows.append((nb.stem, f"FAILED: {last_error_line(e.failed_dir)} ({e.failed_dir / 'error.txt'})"))
            continue
        executed.append(out)
        rows.append((nb.stem, read_metrics(out.parent)))
    index = render_index(profile, executed, runs_root=args.runs_root)
    print(f"\nHeadline metrics (profile {profile}):\n{summary_table(rows)}\n\nExecuted notebooks and HTML: {index}")
    if failure is not None:
        print(f"\n{failure}", file=sys.stderr)
    total = time.monotonic() - start
    if failure is None and len(seconds) == len(notebooks_in(args.notebook_dir)):
        write_run_seconds(index.parent, total, seconds)
    print(f"make run took {total:.0f} s")
    return 1 if failure is not None else 0


def write_run_seconds(folder: Path, total: float, seconds: dict[str, float]) -> Path:
    """``<folder>/run_seconds.json``: the wall time of a complete, successful run of every notebook, per notebook
    and in all (HTML rendering included), with the machine it ran on (``make results`` copies it to results/)."""
    import os

    out = Path(folder) / "run_seconds.json"
    data = {"make_run_seconds": round(total, 1), "notebook_seconds": seconds, "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "setup_excluded": True}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(out)
    return out


if __name__ == "__main__":
    sys.exit(main())
