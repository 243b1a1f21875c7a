"""Exported HTML pages: widget views as static snapshots of their stored state, MathJax from a local copy, no CDN
(steerlab.viz.export, used by steerlab.pipeline.render_index). No kernel runs here: the notebooks are hand-made."""

import copy
import re
from pathlib import Path

import nbformat
import pytest

from steerlab import pipeline
from steerlab.viz import export as E

CTRL = "@jupyter-widgets/controls"


def _model(name: str, module: str = CTRL, **state) -> dict:
    return {"model_module": module, "model_module_version": "2.0.0", "model_name": name,
            "state": {"_model_name": name, "_dom_classes": [], "description": "", **state}}


def _view(model_id: str, text: str) -> dict:
    return {"output_type": "display_data", "metadata": {},
            "data": {E.WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0},
                     "text/plain": [text]}}


def hand_made_notebook() -> dict:
    """A notebook as papermill leaves it: a VBox (HTML, Dropdown, slider, Output, SelectMultiple, progress bar, an
    HBox with a hidden label) and a view whose state was not stored."""
    states = {
        "lay": {"model_module": "@jupyter-widgets/base", "model_name": "LayoutModel", "state": {"display": None}},
        "lay_hidden": {"model_module": "@jupyter-widgets/base", "model_name": "LayoutModel",
                       "state": {"display": "none"}},
        "html": _model("HTMLModel", value="<b>first &amp; bold</b>", layout="IPY_MODEL_lay"),
        "drop": _model("DropdownModel", description="concept", index=1, _options_labels=["pet", "city", "food"]),
        "slide": _model("FloatSliderModel", description="strength", value=2.5, min=0.0, max=8.0),
        "out": _model("OutputModel", "@jupyter-widgets/output", outputs=[
            {"output_type": "stream", "name": "stdout", "text": "steered <answer>\n"},
            {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<table><tr><td>cell 42</td>"
                                                                                  "</tr></table>",
                                                                     "text/plain": "table"}}]),
        "multi": _model("SelectMultipleModel", index=[0, 2], _options_labels=["x", "y", "z"]),
        "bar": _model("FloatProgressModel", value=3.0, max=4.0, min=0.0, bar_style="success"),
        "lab": _model("LabelModel", value="shown label"),
        "gone": _model("LabelModel", value="hidden label", layout="IPY_MODEL_lay_hidden"),
        "row": _model("HBoxModel", children=["IPY_MODEL_lab", "IPY_MODEL_gone"]),
        "box": _model("VBoxModel", children=[f"IPY_MODEL_{k}" for k in
                                             ("html", "drop", "slide", "out", "multi", "bar", "row")]),
    }
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {E.WIDGET_STATE: {"version_major": 2, "version_minor": 0, "state": states}}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\nInline $x_i \\in \\mathbb{R}^d$ and\n\n$$a^2 + b^2$$"),
                nbformat.v4.new_code_cell("box", outputs=[nbformat.from_dict(_view("box", "VBox(children=...)"))]),
                nbformat.v4.new_code_cell("lost", outputs=[
                    nbformat.from_dict(_view("nowhere", "Dropdown(value='kept repr')"))])]
    return nb


def test_widget_views_become_static_html_of_their_last_state_in_order():
    nb = hand_made_notebook()
    before = copy.deepcopy(nb)
    out = E.snapshot_widgets(nb)
    assert nb == before  # the executed notebook is not changed
    assert "widgets" not in out.metadata  # else the template would load the widget manager from a CDN
    data = out.cells[1].outputs[0]["data"]
    assert E.WIDGET_VIEW not in data
    snap = data["text/html"]
    pieces = ["<b>first &amp; bold</b>", "concept:</span> <span class='sw-value'>city</span>",
              "strength:</span> <span class='sw-value'>2.5</span>", "steered &lt;answer&gt;", "<td>cell 42</td>",
              "<span class='sw-value'>x, z</span>", "3 / 4", "shown label"]
    where = [snap.find(p) for p in pieces]
    assert all(i >= 0 for i in where), [p for p, i in zip(pieces, where) if i < 0]
    assert where == sorted(where)  # children in the order of the box
    assert "width:75.0%" in snap and "#4caf50" in snap  # the bar: value/max, success colour
    text = re.sub(r"<[^>]*>", " ", re.sub(r"<style>.*?</style>", "", snap))
    assert "hidden label" not in text and "pet" not in text and "food" not in text  # hidden widget, unpicked options
    states = E._states(hand_made_notebook())
    assert re.sub(r"<[^>]*>", "", E.widget_html("multi", states)) == "x, z"
    assert "sw-row" in snap  # the HBox lays its children out in a row


def test_a_view_whose_state_is_missing_keeps_its_text_repr():
    out = E.snapshot_widgets(hand_made_notebook())
    data = out.cells[2].outputs[0]["data"]
    assert data == {"text/plain": ["Dropdown(value='kept repr')"]}
    bare = hand_made_notebook()
    del bare.metadata["widgets"]  # a run that stored no widget state at all
    bare.cells[2].outputs[0]["data"].pop("text/plain")
    out = E.snapshot_widgets(bare)
    assert out.cells[1].outputs[0]["data"] == {"text/plain": ["VBox(children=...)"]}
    assert "not saved" in out.cells[2].outputs[0]["data"]["text/plain"]
    page = E.to_html(bare)  # exports without failing, the repr shown as text
    assert "VBox(children=...)" in page and "steerlab-widget" not in page


def test_render_index_writes_pages_that_load_the_local_mathjax_and_no_cdn(tmp_path):
    folder = tmp_path / "p" / "01_tiny"
    folder.mkdir(parents=True)
    nbformat.write(hand_made_notebook(), str(folder / "01_tiny.ipynb"))
    index = pipeline.render_index("p", [folder / "01_tiny.ipynb"], runs_root=tmp_path)
    page = (folder / "01_tiny.html").read_text()
    assert not re.search(r"""(src|href)=["']?https?://""", page)  # nothing from a network
    assert "cdnjs" not in page and "unpkg" not in page and "require.min.js" not in page
    urls = re.findall(r"""<script[^>]*src=["']([^"']+)["']""", page)
    assert urls == ["../.static/mathjax/tex-svg-full.js"]
    js = (folder / urls[0]).resolve()
    assert js == tmp_path / "p" / pipeline.STATIC_DIR / "mathjax" / "tex-svg-full.js" and js.stat().st_size > 1e6
    assert 'VERSION="3.' in js.read_text() and (js.parent / "LICENSE").is_file()  # MathJax 3 and its licence
    assert "window.MathJax" in page and "inlineMath: [['$', '$']" in page
    assert "$x_i \\in \\mathbb{R}^d$" in page and "$$a^2 + b^2$$" in page  # TeX left for MathJax to typeset
    assert re.search(r"""concept:</span> <span class=["']sw-value["']>city</span>""", page)  # the widget snapshot
    assert "href='01_tiny/01_tiny.html'" in index.read_text()
    assert "static" not in index.read_text()  # the static folder is not listed as a run
    # hidden, so that shell loops over runs/<profile>/*/ (`make results`) see run folders only
    assert pipeline.STATIC_DIR.startswith(".")


def test_without_mathjax_the_page_still_exports_and_has_no_script(tmp_path, monkeypatch):
    monkeypatch.setattr(E, "mathjax_source", lambda: None)
    nbformat.write(hand_made_notebook(), str(tmp_path / "n.ipynb"))
    page = E.write_html(tmp_path / "n.ipynb", tmp_path / "_static").read_text()
    assert not re.findall(r"<script[^>]*src=", page) and "window.MathJax" not in page
    assert "$$a^2 + b^2$$" in page and not (tmp_path / "_static").exists()


@pytest.mark.parametrize("src", ["https://cdn.example/x.js", "http://unpkg.example/y.js"])
def test_cdn_scripts_in_outputs_are_dropped(src):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": f"<script src='{src}'></script><p>kept</p>"})])]
    page = E.to_html(nb)
    assert src not in page and "<p>kept</p>" in page


def test_mathjax_ships_with_the_installed_package():
    src = E.mathjax_source()
    assert src is not None, "django-static-mathjax is a dependency (pyproject.toml): run `make setup`"
    assert src.name == "tex-svg-full.js" and Path(src).stat().st_size > 1_000_000
