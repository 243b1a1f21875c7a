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


def test_dashboard_parts():
    model, world = models.load_tinyworld()
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    rows = S.token_rows(world.training_stream(9), model.tokenizer, 30, 24)
    acts = viz.feature_acts(model, sae, rows)
    assert acts.shape == (30, 24, sae.cfg.d_sae)
    assert (acts[:, 0] == 0).all() and (acts[rows == 0] == 0).all()  # <bos> and <pad> masked
    f = int(acts.flatten(0, 1).gt(0).sum(0).argmax())
    ctx = viz.top_contexts(acts, rows, model.tokenizer, f, k=3)
    assert len(ctx) == 3 and all(len(t) == len(v) for t, v in ctx)
    assert max(ctx[0][1]) == pytest.approx(float(acts[..., f].max()))
    eff = viz.logit_effects(model, sae, f, k=5)
    assert eff["promoted_logit"].is_monotonic_decreasing and eff["promoted_logit"].iloc[0] > eff["suppressed_logit"].iloc[0]
    full = sae.W_dec[f].detach() @ model.W_U.detach()
    assert eff["promoted_logit"].iloc[0] == pytest.approx(float(full.max()), rel=1e-5)
    html = viz.dashboard_html(acts, rows, model, sae, f, k=3, label="x")
    assert html.count("CircuitsVis.render(") == 3 and "promoted" in html
    fig = viz.activation_histogram(acts, f)
    assert "fires on" in fig.axes[0].get_title()
    box = viz.feature_browser(acts, rows, model, sae, [f, 0])
    assert box.children[0].value == f


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
