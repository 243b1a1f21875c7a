import html as _html
import re

import pytest
import torch

from steerlab import models
from steerlab import sae as S
from steerlab.viz import dashboards as viz

torch.set_num_threads(1)


def test_views_do_not_embed_the_script_and_close_their_div():
    a = viz.token_activations_html(["<bos>", "the", "cat"], [0.0, 1.0, 2.5])
    b = viz.token_activations_html(["x"], [3.0], label="feature 7")
    for v in (a, b):
        assert len(v) < 5000  # no 1.3 MB bundle in a view
        uid = re.search(r'<div id="(cv-[0-9a-f]+)"', v).group(1)
        assert f'<div id="{uid}" style="margin: 6px 0;"></div>' in v  # closed, not self-closing
        assert "/>" not in v.split("<script>")[0]
        assert f'CircuitsVis.render("{uid}", CircuitsVis.ColoredTokens' in v
    assert re.search(r'<div id="(cv-[0-9a-f]+)"', a).group(1) != re.search(r'<div id="(cv-[0-9a-f]+)"', b).group(1)
    with pytest.raises(ValueError, match="one value per token"):
        viz.token_activations_html(["a", "b"], [1.0])


def test_page_embeds_the_script_once():
    views = [viz.token_activations_html(["a", "b"], [1.0, float(i)]) for i in range(5)]
    html = viz.page(views, "t")
    script = viz.circuitsvis_script()
    assert len(script) > 1_000_000
    assert html.count(script[:200]) == 1  # the bundle once, whatever the number of views
    assert html.count("CircuitsVis.render(") == 5
    assert "</script>" not in script


@pytest.fixture(scope="module")
def world_acts():
    model, world = models.load_tinyworld()
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    rows = S.token_rows(world.training_stream(9), model.tokenizer, 30, 24)
    acts = viz.feature_acts(model, sae, rows)
    f = int(acts.flatten(0, 1).gt(0).sum(0).argmax())
    return model, sae, rows, acts, f


def test_circuitsvis_tokens_are_escaped_and_pages_bundle_it_only_when_needed():
    v = viz.token_activations_html(["<eos>", " a&b"], [1.0, 2.0])
    assert "&lt;eos&gt;" in v and "<eos>" not in v and "a&amp;b" in v  # circuitsvis writes tokens as inner HTML
    plain = viz.page([viz.tokens_html(["a"], [1.0])], "t")
    assert "CircuitsVis" not in plain and len(plain) < 5000


def test_tokens_html_keeps_spaces_escapes_and_windows_around_the_peak():
    html = viz.tokens_html(["<bos>", " the", " <eos>", "\n", " x"], [0.0, 1.0, 4.0, 0.5, 2.0])
    texts = [_html.unescape(t) for t in re.findall(r"<span [^>]*>(.*?)</span>", html)]
    assert texts == ["<bos>", " the", " <eos>", "\u21b5", " x"]  # spaces kept, newline visible
    assert "<eos>" not in html and "<bos>" not in html and "white-space:pre" in html
    shades = [float(a) for a in re.findall(r"rgba\(237,137,54,([0-9.]+)\)", html)]
    assert shades == [0.0, 0.25, 1.0, 0.125, 0.5]
    win = viz.tokens_html([f" t{i}" for i in range(40)], [float(i == 20) for i in range(40)], peak=20, window=(3, 2))
    assert [_html.unescape(t) for t in re.findall(r"<span [^>]*>(.*?)</span>", win)] == [f" t{i}" for i in range(17, 23)]
    assert win.count("&hellip;") == 2 and win.count("#c05621") == 1  # cut on both sides, the peak outlined
    with pytest.raises(ValueError, match="one value per token"):
        viz.tokens_html(["a", "b"], [1.0])


def test_histogram_svg_counts_every_firing():
    values = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 9.0]])
    svg = viz.histogram_svg(values, bins=3)
    counts = [int(c) for c in re.findall(r": (\d+)</title></rect>", svg)]
    assert sum(counts) == 4 and counts == [3, 1]  # [0, 3): 1, 2, 2; [6, 9]: 9 (the empty bin is not drawn)
    assert "fires on 4 / 6 positions" in svg
    assert "fires on 0 / 2" in viz.histogram_svg(torch.zeros(2))


def test_dashboard_parts(world_acts):
    model, sae, rows, acts = world_acts[:4]
    f = world_acts[4]
    assert acts.shape == (30, 24, sae.cfg.d_sae)
    assert (acts[:, 0] == 0).all() and (acts[rows == 0] == 0).all()  # <bos> and <pad> masked
    ctx = viz.top_contexts(acts, rows, model.tokenizer, f, k=3)
    assert len(ctx) == 3 and all(len(t) == len(v) for t, v in ctx)
    assert max(ctx[0][1]) == pytest.approx(float(acts[..., f].max()))
    eff = viz.logit_effects(model, sae, f, k=5)
    assert eff["promoted_logit"].is_monotonic_decreasing and eff["promoted_logit"].iloc[0] > eff["suppressed_logit"].iloc[0]
    full = sae.W_dec[f].detach() @ model.W_U.detach()
    assert eff["promoted_logit"].iloc[0] == pytest.approx(float(full.max()), rel=1e-5)
    assert eff["suppressed_logit"].iloc[0] == pytest.approx(float(full.min()), rel=1e-5)
    html = viz.dashboard_html(acts, rows, model, sae, f, k=3, label="x <y>",
                              explanations={"mi": ["guitar", "<eos>"], "max_act": "a <b>"})
    assert "<script" not in html and "x &lt;y&gt;" in html and "guitar &lt;eos&gt;" in html and "a &lt;b&gt;" in html
    assert html.count("#c05621") == 3  # three contexts, each around its peak
    first = re.search(r"top contexts</b><div style='margin:2px 0'>(.*?)</div>", html).group(1)
    shown = "".join(_html.unescape(t) for t in re.findall(r"<span [^>]*>(.*?)</span>", first))
    row = next(r for r in rows if viz.token_strings(model.tokenizer, r[r != 0].tolist()) == ctx[0][0])
    decoded = model.tokenizer.decode(row[row != 0].tolist())
    assert "".join(ctx[0][0]) == decoded and shown in decoded and " " in shown.strip()  # decoded text, spaces kept
    assert "promoted tokens" in html and "suppressed tokens" in html and "<svg class='histogram'" in html
    top = viz.feature_logit_effects(model, sae, f, k=8).promoted[0][0]
    assert _html.escape(top.replace("\n", "\u21b5")) in html.split("promoted tokens")[1]
    fig = viz.activation_histogram(acts, f)
    assert "fires on" in fig.axes[0].get_title()


def test_feature_browser_pages_and_builds_each_dashboard_once(world_acts, monkeypatch):
    model, sae, rows, acts, f = world_acts
    built = []
    real = viz.dashboard_html
    monkeypatch.setattr(viz, "dashboard_html", lambda *a, **k: built.append(a[4]) or real(*a, **k))
    feats = [f, 0, 5]
    box = viz.feature_browser(acts, rows, model, sae, feats, labels={0: "zero"},
                              explanations={"mi": {0: ["w", "<eos>"]}})
    (prev, pick, nxt, where), out = box.children[0].children, box.children[1]
    assert built == [f] and f"data-feature='{f}'" in out.value and where.value == "1 / 3" and prev.disabled
    nxt.click()
    assert built == [f, 0] and "data-feature='0'" in out.value and "w &lt;eos&gt;" in out.value
    nxt.click()
    assert nxt.disabled and where.value == "3 / 3" and "data-feature='5'" in out.value
    prev.click()
    prev.click()
    assert built == [f, 0, 5] and f"data-feature='{f}'" in out.value  # built once, shown again from the cache
    pick.value = 2
    assert "data-feature='5'" in out.value and built == [f, 0, 5]


def test_feature_contexts_equal_top_contexts_of_the_full_codes(world_acts):
    model, sae, rows, acts, f = world_acts
    got = viz.feature_contexts(model, {S.DEFAULT_LAYER: sae}, rows, [(S.DEFAULT_LAYER, f), (S.DEFAULT_LAYER, 3)], k=4,
                               batch_size=7)
    for feat in (f, 3):
        want = viz.top_contexts(acts, rows, model.tokenizer, feat, k=4)
        assert [t for t, _ in got[(S.DEFAULT_LAYER, feat)]] == [t for t, _ in want]
        for (_, a), (_, b) in zip(got[(S.DEFAULT_LAYER, feat)], want):
            assert a == pytest.approx(b, abs=1e-5)


def test_curve_plots_each_series_against_its_own_x_when_given():
    from steerlab.viz import plots

    fig = plots.curve([1, 2, 3], {"shared": [0.1, 0.2, 0.3], "own": ([1, 4], [0.5, 0.6])}, "x", "y")
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    assert list(lines["shared"].get_xdata()) == [1, 2, 3]
    assert list(lines["own"].get_xdata()) == [1, 4] and list(lines["own"].get_ydata()) == [0.5, 0.6]


def test_tradeoff_draws_each_setting_with_its_strength():
    from steerlab.viz import plots

    fig = plots.tradeoff({"amplify": ([1.0, 0.98, 0.7], [0.5, 0.16, 0.06], [4, 12, 16])}, "benign", "asr",
                         origin=(1.0, 1.0))
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert list(lines["amplify"].get_xdata()) == [1.0, 0.98, 0.7] and list(lines["amplify"].get_ydata()) == [0.5, 0.16, 0.06]
    assert list(lines["no steering"].get_xdata()) == [1.0]
    assert [t.get_text() for t in ax.texts] == ["4", "12", "16"]


def test_labelled_points_names_each_point_and_shades_the_region():
    from steerlab.viz import plots

    fig = plots.labelled_points({"used": (0.025, 0.77), "k16": (0.047, 0.93)}, "drop", "mi",
                                region=((0, 0.02), (0.8, 1.0)), region_label="both")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["used", "k16"]
    assert [tuple(l.get_xydata()[0]) for l in ax.get_lines()] == [(0.025, 0.77), (0.047, 0.93)]
    (band,) = ax.collections
    (x0, y0), (x1, y1) = band.get_paths()[0].get_extents().get_points()
    assert (x0, y0, x1, y1) == pytest.approx((0, 0.8, 0.02, 1.0)) and band.get_label() == "both"
