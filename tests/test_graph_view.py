"""The offline HTML view: pruned by default to the most influential nodes, a control that shows more, fits the page,
hover and click details (checked in headless Chromium; a real click through playwright where it is installed)."""

import importlib.util
import json
import re
import shutil
import subprocess

import networkx as nx
import pytest

from steerlab.circuits import graph as G
from steerlab.circuits import io as GI
from steerlab.viz import graph_view as V

from test_graph import PROMPT, tiny  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
MAX_NODES = 4  # the tiny graph holds 11 feature and error nodes: a cap of 4 gives three levels


@pytest.fixture(scope="module")
def view(tiny, tmp_path_factory):  # noqa: F811
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT)
    nxg = GI.to_networkx(g, G.prune(g), explanations={(l, f): "hello <world>" for l, _, f in g.active_features.tolist()},
                        n_model_layers=2, tokenizer=model.tokenizer)
    default = V.levels(nxg, max_nodes=MAX_NODES)[0].nodes
    top = next(n for n in V._middle(nxg) if nxg.nodes[n]["kind"] == "feature" and n in default)
    d = nxg.nodes[top]
    contexts = {(d["layer"], d["feature"]): [(["<bos>", " the", " <eos>", " city"], [0.0, 1.0, 3.0, 0.5])]}
    path = V.write_html(nxg, tmp_path_factory.mktemp("view") / "g.html", contexts=contexts, max_nodes=MAX_NODES)
    return nxg, path, top


def _chain(influences, n_pos=4):
    """A hand-made graph: one feature per influence at layer 0, position i % n_pos, each feeding the logit; the
    embedding at its position feeds it."""
    g = nx.DiGraph(prompt="a b c d", input_tokens=["a", " b", " c", " d"][:n_pos], layers=[0], n_layers=1, d_sae=100)
    for p in range(n_pos):
        g.add_node(f"E_{p}_{p}", kind="embedding", layer=-1, position=p, feature=-1, token="abcd"[p], influence=0.5,
                   cumulative_influence=None, activation=None, explanation="")
    g.add_node("2_7_3", kind="logit", layer=1, position=n_pos - 1, feature=7, token="z", prob=0.9,
               is_target_logit=True, influence=0.0, cumulative_influence=None, activation=None, explanation="")
    for i, x in enumerate(influences):
        n = f"0_{i}_{i % n_pos}"
        g.add_node(n, kind="feature", layer=0, position=i % n_pos, feature=i, token="abcd"[i % n_pos], influence=x,
                   cumulative_influence=None, activation=1.0, explanation=f"w{i}", acts_by_pos=[0.0] * n_pos)
        g.add_edge(n, "2_7_3", weight=x)
        g.add_edge(f"E_{i % n_pos}_{i % n_pos}", n, weight=1.0 + i)
    return g


def test_default_level_holds_the_influence_share_up_to_the_cap():
    g = _chain([8.0, 4.0, 2.0, 1.0, 0.5, 0.5])  # shares 0.5, 0.75, 0.875, ...
    assert V.default_count(g, share=0.7, max_nodes=40) == 2
    assert V.default_count(g, share=0.8, max_nodes=40) == 3
    assert V.default_count(g, share=0.8, max_nodes=1) == 1
    assert V.default_count(g, share=1.0, max_nodes=40) == 6
    lv = V.levels(g, share=0.7, max_nodes=40, factors=(2,), edges_per_node=1)
    assert [l.n_middle for l in lv] == [2, 4, 6]  # default, 2x, all
    assert lv[0].nodes == {"0_0_0", "0_1_1", "2_7_3", "E_0_0", "E_1_1"}  # the top two, their embeddings, the logit
    assert lv[0].share == pytest.approx(12 / 16)
    assert lv[-1].nodes == set(g.nodes)
    assert ("0_0_0", "2_7_3") in lv[0].edges and ("0_1_1", "2_7_3") in lv[0].edges  # each node's strongest output
    assert sum(t == "2_7_3" for _, t in lv[-1].edges) == 6  # strongest output of every feature, though 1 per target
    with pytest.raises(ValueError, match="share"):
        V.default_count(g, share=0.0)


def test_big_graphs_default_to_tens_of_nodes():
    g = _chain([1.0 / (i + 1) for i in range(600)], n_pos=4)
    lv = V.levels(g)  # defaults: 40 feature and error nodes, then 80, 160, all
    assert [l.n_middle for l in lv] == [40, 80, 160, 600]
    assert len(lv[0].nodes) <= 45 and all(len(l.edges) <= 4 * len(l.nodes) for l in lv)
    assert V.view_features(g)[:3] == [(0, 0), (0, 1), (0, 2)] and len(V.view_features(g)) == 160


def test_page_is_offline_pruned_and_fits_the_page(view):
    nxg, path, _ = view
    page = path.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", page)  # no CDN, no network
    lv = V.levels(nxg, max_nodes=MAX_NODES)
    svgs = re.findall(r"<svg class='level'.*?</svg>", page, re.S)
    assert len(svgs) == len(lv) >= 3
    for svg, l in zip(svgs, lv):
        assert svg.count("class='node'") == len(l.nodes) and svg.count("class='edge'") == len(l.edges)
        assert "viewBox='0 0 " in svg and "width:100%" in svg
        assert svg.count("class='col'") == len(nxg.graph["input_tokens"])  # one labelled column per position
    assert svgs[0].count("class='node'") < nxg.number_of_nodes() == svgs[-1].count("class='node'")
    assert "display:block" in svgs[0] and "display:none" in svgs[1]  # only the default level shows on load
    assert "hello &lt;world&gt;" in page and "<world>" not in page  # explanation in the hover title, escaped
    assert page.count("<button class='lvl'") == len(lv) and f"all {nxg.number_of_nodes()} nodes" in page
    data = json.loads(re.search(r"class='graph-data'>(.*?)</script>", page, re.S).group(1))
    assert set(data["nodes"]) == set(nxg.nodes) and "<eos>" not in page.split("class='graph-data'>")[1]
    assert "".join(data["tokens"][1:]) == PROMPT  # tokens respaced from the prompt ("context : rumor ...")
    pos = V.layout(nxg).pos
    logit = GI.target_node(nxg)
    assert all(pos[logit][1] < pos[n][1] for n, d in nxg.nodes(data=True) if d["kind"] == "embedding")


def test_spaced_tokens_restore_the_prompts_whitespace():
    assert V.spaced_tokens(["<bos>", "how", "to", "\n", "play"], "how to\n play") == ["<bos>", "how", " to", "\n",
                                                                                       " play"]
    assert V.spaced_tokens(["a", " b", "zz"], "a b c") == ["a", " b", "zz"]  # not found: left as it is


def _dump(path, fragment, tmp_path):
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path}", "--virtual-time-budget=3000",
                          "--dump-dom", path.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-nodes-drawn="(\d+)"', out.stdout)
    assert m, out.stderr[-2000:]
    return int(m.group(1)), out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_headless_chromium_draws_the_default_level_and_all_on_request(view, tmp_path):
    nxg, path, top = view
    lv = V.levels(nxg, max_nodes=MAX_NODES)
    drawn, dom = _dump(path, f"#select={top}", tmp_path / "a")
    assert drawn == len(lv[0].nodes) < nxg.number_of_nodes()
    detail = dom.split("class=\"detail\"")[1]
    assert "top contexts" in detail and "> &lt;eos&gt;</span>" in detail  # the clicked feature's contexts, as text
    drawn_all, _ = _dump(path, "#all", tmp_path / "b")
    assert drawn_all == nxg.number_of_nodes()


@pytest.mark.skipif(CHROMIUM is None or importlib.util.find_spec("playwright") is None,
                    reason="needs chromium and playwright")
def test_clicking_the_control_shows_more_nodes_and_a_node_its_details(view):
    from playwright.sync_api import sync_playwright

    nxg, path, top = view
    counts = [len(l.nodes) for l in V.levels(nxg, max_nodes=MAX_NODES)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(path.as_uri())
        drawn = lambda: int(page.evaluate("document.body.dataset.nodesDrawn"))  # noqa: E731
        assert drawn() == counts[0]
        page.click("button.lvl[data-level='1']")
        assert drawn() == counts[1] > counts[0]
        page.click("button.lvl >> nth=-1")
        assert drawn() == nxg.number_of_nodes()
        page.click("button.lvl[data-level='0']")
        node = page.locator(f"svg.level[data-level='0'] .node[data-id='{top}']")
        node.hover()
        assert "hello <world>" in page.locator(".tip").inner_text()
        node.click()
        text = page.locator(".detail").inner_text()
        assert "top contexts" in text and "<eos>" in text and "strongest inputs" in text
        browser.close()


def test_view_of_a_circuit_tracer_json_ranks_by_the_cumulative_share(view):
    """A JSON with circuit-tracer's influence only (the cumulative share, smaller = more influential; no raw
    ``steerlab_influence``) lays out and prunes like the graph itself: the most influential nodes come first."""
    nxg, _, _ = view
    data = GI.to_json(nxg)
    for n in data["nodes"]:
        n.pop("steerlab_influence")
    back = GI.from_json(data)
    assert all(d["influence"] is None for _, d in back.nodes(data=True))
    assert V.layout(back).pos == V.layout(nxg).pos
    assert [l.nodes for l in V.levels(back, max_nodes=MAX_NODES)] == [l.nodes for l in V.levels(nxg, max_nodes=MAX_NODES)]
    page = V.render_html(back)
    assert page.count("class='node'") >= nxg.number_of_nodes() and "cumulative share" in page
