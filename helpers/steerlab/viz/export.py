"""Executed notebooks as offline HTML pages: formulas typeset by a local MathJax, widgets as static snapshots.

nbconvert's ``lab`` template loads require.js, MathJax, mermaid and the widget manager from a CDN; offline they
never load, so formulas stay raw TeX and every ipywidgets output is an empty box. :func:`write_html` exports with
that template, except that:

- MathJax 3 (``tex-svg-full.js``, one self-contained file from the PyPI package ``django-static-mathjax``) is copied
  once into a ``static_dir`` beside the pages (the pipeline uses ``runs/<profile>/.static/``) and loaded from
  there by a relative URL; it typesets ``$...$``, ``\\(...\\)``, ``$$...$$`` and ``\\[...\\]`` as SVG, which
  needs no web font, so the page makes no request beyond its own folder tree;
- every ``application/vnd.jupyter.widget-view+json`` output becomes static HTML rendered from the widget state
  that nbclient (papermill) stores in ``metadata.widgets["application/vnd.jupyter.widget-state+json"]`` at the end
  of the run, i.e. each widget's last value (:func:`snapshot_widgets`); a view whose state is missing keeps its
  ``text/plain`` repr;
- the CDN script tags (and any other ``<script src="http...">`` an output carries) are dropped.
"""

from __future__ import annotations

import copy
import html
import importlib.util
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MATHJAX_FILE = "tex-svg-full.js"  # MathJax 3: TeX input (every extension), SVG output, no fonts to load
CDN_SCRIPT = re.compile(r"""<script[^>]*src=["']https?://[^"']*["'][^>]*>\s*</script>""")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAX_DEPTH = 32  # nesting of widget children followed (a cycle in a hand-edited state stops here)

# MathJax 3 configured like nbconvert's MathJax 2 block (same delimiters, escapes, AMS numbering)
_MATHJAX_CONFIG = """<script>
window.MathJax = {
  tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'},
  svg: {fontCache: 'global'},
  options: {enableMenu: false}
};
</script>"""

# The lab template with its CDN loaders replaced: MathJax from ``resources.mathjax_url`` (empty: none).
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.mathjax_url -%}
""" + _MATHJAX_CONFIG + """
<script src="{{ resources.mathjax_url }}"></script>
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
"""

_CSS = ("<style>.steerlab-widget{display:flex;flex-direction:column;align-items:flex-start;gap:4px;margin:2px 0;"
        "text-align:left}"
        ".steerlab-widget .sw-col{display:flex;flex-direction:column;gap:4px}"
        ".steerlab-widget .sw-row{flex-direction:row;flex-wrap:wrap;align-items:center;gap:8px}"
        ".steerlab-widget .sw-desc{font-weight:600;margin-right:4px}"
        ".steerlab-widget .sw-bar{display:inline-block;width:12em;height:0.9em;background:#e0e0e0;"
        "vertical-align:middle;margin-right:6px}"
        ".steerlab-widget .sw-fill{display:block;height:100%;background:#2196f3}"
        ".steerlab-widget .sw-title{font-weight:600;border-bottom:1px solid #ccc}</style>")
_BAR_COLOURS = {"success": "#4caf50", "info": "#00bcd4", "warning": "#ff9800", "danger": "#f44336"}


# ---------------------------------------------------------------------------------------------- MathJax


def mathjax_source() -> Path | None:
    """``tex-svg-full.js`` of the installed ``django-static-mathjax`` package (module ``mathjax``), else None."""
    spec = importlib.util.find_spec("mathjax")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "static" / "mathjax" / "es5" / MATHJAX_FILE
        if path.is_file():
            return path
    return None


def copy_mathjax(static_dir: Path) -> Path | None:
    """``<static_dir>/mathjax/tex-svg-full.js`` (and MathJax's LICENSE), copied when missing or of another size;
    None, with a warning, when the package is not installed (formulas then stay TeX)."""
    src = mathjax_source()
    if src is None:
        log.warning("MathJax not found (the PyPI package django-static-mathjax, installed by `make setup`): "
                    "formulas in the HTML pages stay TeX")
        return None
    dst = Path(static_dir) / "mathjax" / MATHJAX_FILE
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
        lic = src.parent.parent / "LICENSE"
        if lic.is_file():
            shutil.copyfile(lic, dst.parent / "LICENSE")
    return dst


# ---------------------------------------------------------------------------------------------- widgets


def _states(nb: dict) -> dict[str, dict]:
    """``{model_id: {"model_name": ..., "state": {...}}}`` stored in the notebook ({} when none)."""
    w = (nb.get("metadata") or {}).get("widgets") or {}
    return (w.get(WIDGET_STATE) or {}).get("state") or {}


def _ref(v: Any) -> str | None:
    return v[len("IPY_MODEL_"):] if isinstance(v, str) and v.startswith("IPY_MODEL_") else None


def _text(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _text(v)


def _hidden(state: dict, states: dict[str, dict]) -> bool:
    layout = states.get(_ref(state.get("layout")) or "", {}).get("state", {})
    return layout.get("display") == "none" or layout.get("visibility") == "hidden"


def _labelled(state: dict, body: str) -> str:
    desc = state.get("description") or ""
    label = f"<span class='sw-desc'>{desc if state.get('description_allow_html') else _text(desc)}:</span> " \
        if desc else ""
    return f"<div>{label}{body}</div>"


def _choices(state: dict) -> list[str]:
    labels, index = state.get("_options_labels") or [], state.get("index")
    picked = index if isinstance(index, (list, tuple)) else [] if index is None else [index]
    return [str(labels[i]) for i in picked if isinstance(i, int) and 0 <= i < len(labels)]


def _progress(state: dict) -> str:
    lo, hi, v = state.get("min") or 0, state.get("max") or 0, state.get("value") or 0
    share = 0.0 if hi == lo else max(0.0, min(1.0, (v - lo) / (hi - lo)))
    colour = _BAR_COLOURS.get(state.get("bar_style") or "", "#2196f3")
    return _labelled(state, f"<span class='sw-bar' role='progressbar' aria-valuenow='{_number(v)}' "
                            f"aria-valuemax='{_number(hi)}'><span class='sw-fill' style='width:{100 * share:.1f}%;"
                            f"background:{colour}'></span></span><span class='sw-value'>{_number(v)} / "
                            f"{_number(hi)}</span>")


def output_html(outputs: list[dict], states: dict[str, dict], depth: int = 0) -> str:
    """Stored outputs (of an Output widget) as HTML: rich HTML, images and LaTeX as they are, text in ``<pre>``."""
    parts = []
    for o in outputs or []:
        kind = o.get("output_type")
        if kind == "stream":
            parts.append(f"<pre>{_text(_join(o.get('text')))}</pre>")
        elif kind == "error":
            tb = _ANSI.sub("", "\n".join(o.get("traceback") or [])) or f"{o.get('ename')}: {o.get('evalue')}"
            parts.append(f"<pre class='sw-error'>{_text(tb)}</pre>")
        elif kind in ("display_data", "execute_result"):
            data = o.get("data") or {}
            view = data.get(WIDGET_VIEW)
            inner = widget_html(str(view.get("model_id")), states, depth + 1) if isinstance(view, dict) else None
            if inner is not None:
                parts.append(inner)
            elif "text/html" in data:
                parts.append(_join(data["text/html"]))
            elif "image/svg+xml" in data:
                parts.append(_join(data["image/svg+xml"]))
            elif "image/png" in data or "image/jpeg" in data:
                mime = "image/png" if "image/png" in data else "image/jpeg"
                parts.append(f"<img src='data:{mime};base64,{_join(data[mime]).strip()}'>")
            elif "text/latex" in data:
                parts.append(f"<div>{_join(data['text/latex'])}</div>")
            elif "text/plain" in data:
                parts.append(f"<pre>{_text(_join(data['text/plain']))}</pre>")
    return "".join(parts)


def _join(v: Any) -> str:
    return "".join(v) if isinstance(v, list) else "" if v is None else str(v)


def widget_html(model_id: str, states: dict[str, dict], depth: int = 0) -> str | None:
    """A static view of one widget from its stored state (its children's too); None when its state is missing.

    Boxes lay their children out in order (HBox in a row); HTML/HTMLMath show their value as HTML, Label and text
    fields their text; Dropdown/Select/RadioButtons/ToggleButtons their current choice, SelectMultiple every one;
    sliders and number fields ``description: value``; a progress bar a static bar with ``value / max``; an Output
    widget its stored outputs; Tab/Accordion each child under its title, Stack its selected child. Any other
    widget shows its model name and value. Hidden widgets (``layout.display == 'none'``) show nothing."""
    entry = states.get(model_id)
    if entry is None or depth > _MAX_DEPTH:
        return None
    name, s = entry.get("model_name", ""), entry.get("state") or {}
    if _hidden(s, states):
        return ""
    kids = [widget_html(r, states, depth + 1) or "" for r in map(_ref, s.get("children") or []) if r]
    if name in ("HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel"):
        cls = "sw-col sw-row" if name == "HBoxModel" else "sw-col"
        return f"<div class='{cls}'>{''.join(kids)}</div>"
    if name in ("TabModel", "AccordionModel", "StackModel"):
        titles = list(s.get("titles") or []) + [""] * len(kids)
        pick = s.get("selected_index")
        shown = [(t, k) for i, (t, k) in enumerate(zip(titles, kids)) if name != "StackModel" or i == pick]
        return "<div class='sw-col'>" + "".join(
            f"<div class='sw-title'>{_text(t) or f'[{i}]'}</div>{k}" if name != "StackModel" else k
            for i, (t, k) in enumerate(shown)) + "</div>"
    if name in ("HTMLModel", "HTMLMathModel"):
        return _labelled(s, f"<div class='sw-html'>{_join(s.get('value'))}</div>")
    if name == "LabelModel":
        return _labelled(s, f"<span>{_text(s.get('value'))}</span>")
    if name == "OutputModel":
        return f"<div class='sw-output'>{output_html(s.get('outputs') or [], states, depth)}</div>"
    if name in ("IntProgressModel", "FloatProgressModel"):
        return _progress(s)
    if "_options_labels" in s:  # Dropdown, Select, RadioButtons, ToggleButtons, SelectMultiple, SelectionSlider
        picked = _choices(s)
        body = " – ".join(picked) if name == "SelectionRangeSliderModel" else ", ".join(picked)
        return _labelled(s, f"<span class='sw-value'>{_text(body) or '(none)'}</span>")
    if name in ("CheckboxModel", "ToggleButtonModel", "ValidModel"):
        return _labelled(s, f"<span class='sw-value'>{'☑' if s.get('value') else '☐'}</span>")
    if name == "ButtonModel":
        return f"<div><button disabled>{_text(s.get('description') or s.get('tooltip') or 'button')}</button></div>"
    if "value" in s:  # sliders, number and text fields, date pickers, ...
        v = s["value"]
        body = " – ".join(map(_number, v)) if isinstance(v, (list, tuple)) else _number(v)
        return _labelled(s, f"<span class='sw-value'>{body}</span>")
    return _labelled(s, f"<span class='sw-value'>[{_text(name.removesuffix('Model'))}]</span>") if kids == [] \
        else f"<div class='sw-col'>{''.join(kids)}</div>"


def snapshot_widgets(nb: dict) -> dict:
    """A copy of the notebook (a dict, nbformat 4) whose widget views are static HTML and whose widget state is
    removed (the template would otherwise load the widget manager from a CDN).

    Each output with a ``application/vnd.jupyter.widget-view+json`` view gets ``text/html``: a
    ``<div class='steerlab-widget'>`` rendered by :func:`widget_html` from the stored state; when that state is
    missing (the run stored none, or not this widget's), the view is dropped and the output keeps its
    ``text/plain`` repr (or says that the widget was not saved)."""
    nb = copy.deepcopy(nb)
    states = _states(nb)
    (nb.get("metadata") or {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            data = out.get("data") or {}
            view = data.pop(WIDGET_VIEW, None)
            if view is None:
                continue
            snap = widget_html(str(view.get("model_id", "")), states) if isinstance(view, dict) else None
            if snap is not None:
                data["text/html"] = f"{_CSS}<div class='steerlab-widget'>{snap}</div>"
            elif not data.get("text/plain"):
                data["text/plain"] = "(a widget whose state was not saved)"
    return nb


# ---------------------------------------------------------------------------------------------- pages


def to_html(nb: dict, mathjax_url: str | None = None) -> str:
    """The notebook (an nbformat 4 dict) as one HTML page with the lab template, widgets snapshotted, no CDN
    script, and MathJax loaded from ``mathjax_url`` (a URL relative to the page; None: no math renderer)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    exporter.raw_template = _TEMPLATE
    exporter.mathjax_url = mathjax_url or ""
    node = nbformat.from_dict(snapshot_widgets(nb))
    body, _ = exporter.from_notebook_node(node)
    return CDN_SCRIPT.sub("", body)


def write_html(notebook: Path, static_dir: Path) -> Path:
    """Export an executed notebook to ``<notebook>.html`` beside it, MathJax copied into ``static_dir``."""
    import nbformat

    notebook = Path(notebook)
    js = copy_mathjax(static_dir)
    url = Path(os.path.relpath(js, notebook.parent)).as_posix() if js is not None else None
    nb = nbformat.read(str(notebook), as_version=4)
    out = notebook.with_suffix(".html")
    out.write_text(to_html(nb, url), encoding="utf-8")
    return out
