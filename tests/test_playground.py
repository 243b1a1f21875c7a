"""The steering playground (steerlab.viz.playground) on the shipped tinyworld model and its layer-2 SAE: any number of
features, the strength slider reaching the steered text, errors shown inside the widget, presets measured."""

import random
from types import SimpleNamespace

import pytest
import torch

from steerlab import sae as sae_mod
from steerlab.evals import explanations as explain_eval
from steerlab.steer import decoding
from steerlab.viz import playground as pg
from steerlab.world import TOPICS

HP = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tinyworld):
    """(model, world, sae, labels) with the shipped SAE at layer 2 and its explanation labels."""
    torch.set_num_threads(1)
    model, world = tinyworld
    sae = sae_mod.load_sae(sae_mod.shipped_sae_dir("tinyworld"), hook_name=HP, model=model)
    labels = explain_eval.labels_for(model, sae, explain_eval.as_suite(world))
    return model, world, sae, labels


def jailbreaks(world, n=8):
    rng = random.Random(3)
    return [world.request(rng, True, True, rng.choice([1, 2, 3]), 3).prompt for _ in range(n)]


def html_of(widget) -> str:
    assert len(widget.out.outputs) == 1
    return widget.out.outputs[0]["data"]["text/html"]


def test_two_features_and_the_slider_change_the_steered_text(setup):
    model, world, sae, labels = setup
    two = [explain_eval.features_with_label(labels, "refusal")[0], explain_eval.features_with_label(labels, "harmful")[0]]
    methods = pg.feature_methods(HP, sae, positions="last_prompt", read="code")
    prompt = next(p for p in jailbreaks(world) if pg.generate(model, [p])[0].startswith("sure"))  # a working jailbreak
    w = pg.playground(model, sae, HP, [prompt], methods, {c: "x" for c in two}, strength=0.0)
    w.method.value = "amplify"
    w.features.value = tuple(two)  # two features: values [pos, 2] reach the view
    assert w.error is None and w.steered == w.unsteered and w.unsteered.startswith("sure")
    assert html_of(w).count("CircuitsVis.render(") == 2  # one token view per selected feature
    w.strength.value = 20.0
    assert w.error is None, w.error
    assert w.steered != w.unsteered and w.steered == "sorry"  # the jailbreak refused
    assert "<b>changed</b>" in html_of(w) and ">sorry</code>" in html_of(w)
    # the widget shows what the registry edit gives, computed without it
    ask = [SimpleNamespace(prompt=prompt, max_new_tokens=8)]
    by_hand = decoding.greedy(model, ask, methods["amplify"](two, 20.0))[0]
    assert w.steered == by_hand
    w.features.value = ()  # an empty selection steers nothing and raises nothing
    assert w.error is None and w.steered == w.unsteered and "select features" in html_of(w)


def test_an_error_is_shown_inside_the_widget_and_replaces_the_result(setup):
    model, world, sae, _ = setup

    def broken(f, s):
        raise RuntimeError("builder failed on purpose")

    methods = {"none": lambda f, s: [], "broken": broken}
    w = pg.playground(model, sae, HP, jailbreaks(world, 2), methods, {5: "a", 9: "b"})
    w.method.value = "none"
    assert w.error is None and "steerlab-result" in html_of(w)
    w.method.value = "broken"  # no exception escapes the observer
    assert isinstance(w.error, RuntimeError)
    page = html_of(w)
    assert "builder failed on purpose" in page and "steerlab-error" in page and "steerlab-result" not in page
    w.method.value = "none"  # the next good update replaces the message
    assert w.error is None and "steerlab-error" not in html_of(w)


def test_the_circuitsvis_script_is_loaded_once_and_views_wait_for_it(setup):
    model, world, sae, _ = setup
    w = pg.playground(model, sae, HP, jailbreaks(world, 2), pg.feature_methods(HP, sae), {5: "a", 9: "b"})
    for s in (1.0, 2.0, 3.0):
        w.strength.value = s
    assert len(w.script.outputs) == 1 and "CircuitsVis" in w.script.outputs[0]["data"]["text/html"]
    assert len(w.script.outputs[0]["data"]["text/html"]) > 100_000  # the bundle itself
    assert "CircuitsVis.render(" in html_of(w) and len(html_of(w)) < 20_000  # views only, no bundle


def test_preset_picks_the_strength_that_changes_most_and_offers_changed_prompts_first(setup):
    model, world, sae, labels = setup
    S = explain_eval.features_with_label(labels, "refusal")[:3] + explain_eval.features_with_label(labels, "harmful")[:3]
    methods = pg.feature_methods(HP, sae, positions="last_prompt", read="code")
    rng = random.Random(5)
    benign = [world.request(rng, False, False).prompt for _ in range(3)]
    candidates = benign + jailbreaks(world, 6)
    p = pg.preset("defuse", model, methods, "amplify", S, [0.0, 20.0], candidates, n=4)
    assert p.strength == 20.0 and p.candidates == len(candidates)
    base = pg.generate(model, candidates)
    steered = pg.generate(model, candidates, methods["amplify"](S, 20.0))
    changed = [c for c, b, s in zip(candidates, base, steered) if b != s]
    assert p.changed == len(changed) >= 3 and p.prompts == (changed + [c for c in candidates if c not in changed])[:4]
    w = pg.playground(model, sae, HP, [], methods, {}, presets=[p], strength=0.0)
    assert (w.method.value, w.strength.value, list(w.features.value)) == ("amplify", 20.0, S)
    assert w.prompt.value == p.prompts[0] and w.steered != w.unsteered and w.error is None
    w.preset.value = -1  # "(free)" keeps the controls as they are
    assert w.strength.value == 20.0


def test_topic_presets_amplify_each_topic_on_its_own_texts(setup):
    model, world, sae, labels = setup
    rng = random.Random(0)
    texts = [world.topic(rng) for _ in range(80)]
    feats = {t: explain_eval.features_with_label(labels, f"topic:{t}")[:3] for t in ("sport", "finance", "music")}
    feats["music"] = []  # a topic without labelled features is skipped
    presets = pg.topic_presets(model, pg.feature_methods(HP, sae), "amplify", feats, texts, [2.0, 8.0], 8, 3, n_topics=3)
    assert [p.name for p in presets] == ["amplify topic sport", "amplify topic finance"]
    for p in presets:
        topic = p.name.split()[-1]
        assert all(len(q.split()) == 6 and q.startswith("text :") for q in p.prompts)
        assert p.changed >= p.candidates // 2  # amplifying a text's own topic changes most continuations
        steered = pg.generate(model, p.prompts[:1], pg.feature_methods(HP, sae)["amplify"](p.features, p.strength))[0]
        assert any(word in TOPICS[topic] for word in steered.split())  # the topic's words appear
