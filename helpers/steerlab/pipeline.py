"""Execute the notebooks in order with papermill (what ``make run`` calls).

``params/<profile>.yaml`` holds a ``common`` section given to every notebook and one section per notebook
stem (``00_tinyworld: {...}``). Each notebook runs into ``runs/<profile>/<stem>/`` (executed notebook,
``metrics.json``, figures); at the end the headline metrics are printed and ``runs/<profile>/index.html``
links the executed notebooks rendered to HTML (offline: no CDN).

Usage::

    python -m steerlab.pipeline --profile default [--only 00_tinyworld 01_train_sae]
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import re
import sys
from pathlib import Path

import yaml

from steerlab.core.runs import REPO_ROOT, read_metrics, run_path

log = logging.getLogger(__name__)
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def load_profile(profile: str) -> dict[str, dict]:
    """Read ``params/<profile>.yaml``; the error lists the profiles that exist."""
    path = REPO_ROOT / "params" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO_ROOT / "params").glob("*.yaml"))
        raise FileNotFoundError(f"no parameter profile {path}; known profiles: {known}")
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError(f"{path} must map 'common' and notebook stems to parameter mappings")
    return spec


def notebook_parameters(spec: dict[str, dict], stem: str, profile: str) -> dict:
    """Parameters for one notebook: ``common``, then its own section, then ``run_dir`` and ``profile``."""
    return {**spec.get("common", {}), **spec.get(stem, {}), "run_dir": f"runs/{profile}/{stem}",
            "profile": profile}


def execute(notebook: Path, profile: str, spec: dict[str, dict], kernel: str = "python3") -> Path:
    """Run one notebook with papermill into its run folder and return the executed notebook's path."""
    import papermill as pm

    stem = notebook.stem
    out_dir = run_path(f"runs/{profile}/{stem}")
    out = out_dir / notebook.name
    pm.execute_notebook(str(notebook), str(out), parameters=notebook_parameters(spec, stem, profile),
                        kernel_name=kernel, cwd=str(REPO_ROOT), progress_bar=False, log_output=False)
    return out


# nbconvert's template loads require.js and MathJax from a CDN; offline they only fail to load (formulas stay
# readable as TeX), so they are dropped and the page makes no network request. circuitsvis views inline
# their own script (steerlab.viz).
_CDN_SCRIPT = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>')


def render_index(profile: str, executed: list[Path]) -> Path:
    """Render each executed notebook to HTML and write ``runs/<profile>/index.html`` linking them."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    rows = []
    for nb in executed:
        body, _ = exporter.from_filename(str(nb))
        body = _CDN_SCRIPT.sub("", body)
        page = nb.with_suffix(".html")
        page.write_text(body)
        metrics = read_metrics(nb.parent)
        cells = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(json.dumps(v))}</li>"
                        for k, v in metrics.items())
        rows.append(f"<h2><a href='{nb.parent.name}/{page.name}'>{nb.stem}</a></h2><ul>{cells}</ul>")
    index = run_path(f"runs/{profile}") / "index.html"
    index.write_text(f"<!doctype html><meta charset='utf-8'><title>steerlab {profile}</title>"
                     f"<h1>steerlab run: {html.escape(profile)}</h1>{''.join(rows)}")
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default", help="parameter profile in params/<profile>.yaml")
    ap.add_argument("--only", nargs="*", help="notebook stems to run (default: all, in order)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = load_profile(args.profile)
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        unknown = set(args.only) - {n.stem for n in notebooks}
        if unknown:
            raise SystemExit(f"unknown notebooks {sorted(unknown)}; have {[n.stem for n in notebooks]}")
        notebooks = [n for n in notebooks if n.stem in args.only]
    executed = []
    for nb in notebooks:
        log.info("running %s (profile %s)", nb.name, args.profile)
        executed.append(execute(nb, args.profile, spec, args.kernel))
    index = render_index(args.profile, executed)
    print(f"\nHeadline metrics (profile {args.profile}):")
    for nb in executed:
        print(f"  {nb.stem}:")
        for k, v in read_metrics(nb.parent).items():
            print(f"    {k:40s} {v}")
    print(f"\nExecuted notebooks and HTML: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
