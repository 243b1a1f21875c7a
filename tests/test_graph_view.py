"""The offline HTML view: self-contained, one drawn node per graph node (checked in headless Chromium)."""

import re
import shutil
import subprocess

import pytest

from steerlab.circuits import graph as G
from steerlab.circuits import io as GI
from steerlab.viz import graph_view as V

from test_graph import PROMPT, tiny  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def view(tiny, tmp_path_factory):  # noqa: F811
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT)
    nxg = GI.to_networkx(g, G.prune(g), explanations={(l, f): "hello <world>" for l, _, f in g.active_features.tolist()},
                        n_model_layers=2, tokenizer=model.tokenizer)
    path = V.write_html(nxg, tmp_path_factory.mktemp("view") / "g.html")
    return nxg, path


def test_page_is_offline_and_has_every_node(view):
    nxg, path = view
    page = path.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no CDN, no network
    assert page.count("class='node'") == nxg.number_of_nodes()
    assert page.count("class='edge'") == nxg.number_of_edges()
    assert "hello &lt;world&gt;" in page  # explanation in the hover title, escaped
    n_feat = sum(d["kind"] == "feature" for _, d in nxg.nodes(data=True))
    assert page.count("CircuitsVis.ColoredTokens") == min(30, n_feat)  # node details: circuitsvis token views
    assert page.count("var CircuitsVis") == 1  # the circuitsvis bundle inlined once
    pos = V.layout(nxg).pos
    logit = GI.target_node(nxg)
    assert all(pos[logit][1] < pos[n][1] for n, d in nxg.nodes(data=True) if d["kind"] == "embedding")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_headless_chromium_draws_every_node(view, tmp_path):
    nxg, path = view
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path}", "--virtual-time-budget=3000",
                          "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-nodes-drawn="(\d+)"', out.stdout)
    assert m, out.stderr[-2000:]
    assert int(m.group(1)) == nxg.number_of_nodes() > 0


def test_view_of_a_circuit_tracer_json_ranks_by_the_cumulative_share(view):
    """A JSON with circuit-tracer's influence only (the cumulative share, smaller = more influential; no raw
    ``steerlab_influence``) lays out like the graph itself: the most influential nodes come first in each cell."""
    nxg, _ = view
    data = GI.to_json(nxg)
    for n in data["nodes"]:
        n.pop("steerlab_influence")
    back = GI.from_json(data)
    assert all(d["influence"] is None for _, d in back.nodes(data=True))
    assert V.layout(back).pos == V.layout(nxg).pos
    page = V.render_html(back)
    assert page.count("class='node'") == nxg.number_of_nodes() and "cumulative share" in page
