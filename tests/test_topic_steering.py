"""Topic steering (notebook 03 section 6): the judge, the strength choice, the fluency score and the sweep."""

import pytest
import torch

from steerlab import sae as sae_mod
from steerlab.core import run as evaluate
from steerlab.evals import explanations as explain_eval
from steerlab.evals import topic_steering as ts
from steerlab.tasks import load_suite

VOCAB = {"music": ["guitar", "drum"], "ocean": ["wave", "reef"]}


def test_on_topic_needs_a_target_word_and_no_other_topic_ahead():
    assert ts.on_topic("the guitar and the drum", "music", VOCAB)
    assert ts.on_topic("Guitar, wave.", "music", VOCAB)  # a tie still counts; case and punctuation ignored
    assert not ts.on_topic("guitar wave reef", "music", VOCAB)  # another topic's words more often
    assert not ts.on_topic("the of by", "music", VOCAB)
    assert not ts.on_topic("guitarist", "music", VOCAB)  # whole words only


def test_choose_takes_the_best_topic_rate_that_keeps_fluency():
    c = [(1.0, {"topic_rate": 0.2, "fluency": -3.0}), (2.0, {"topic_rate": 0.6, "fluency": -3.5}),
         (4.0, {"topic_rate": 0.9, "fluency": -5.0})]
    assert ts.choose(c, base_fluency=-3.0, max_drop=1.0) == 2.0  # 4.0 loses 2 nats per token
    assert ts.choose(c, base_fluency=-3.0, max_drop=3.0) == 4.0
    assert ts.choose(c, base_fluency=-1.0, max_drop=0.1) == 1.0  # none keeps fluency: the weakest strength
    tie = [(1.0, {"topic_rate": 0.5, "fluency": -3.0}), (2.0, {"topic_rate": 0.5, "fluency": -3.0})]
    assert ts.choose(tie, -3.0, 1.0) == 1.0


def test_continuation_logprob_is_the_teacher_forced_mean_and_batches_agree(tinyworld):
    model, _ = tinyworld
    prompts = ["text : the of", "text : a guitar in the"]
    ids = evaluate.complete_ids(model, prompts, 5)
    got = evaluate.continuation_logprob(model, prompts, ids)
    for i, (p, c) in enumerate(zip(prompts, ids)):  # one sequence at a time, by hand
        toks = torch.cat([evaluate.to_tokens(model, [p])[0], torch.tensor(c)])
        with torch.no_grad():
            logp = model(toks[None])[0].log_softmax(-1)
        n_p = len(toks) - len(c)
        want = torch.stack([logp[n_p - 1 + j, c[j]] for j in range(len(c))]).mean()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-4)
    assert torch.allclose(evaluate.continuation_logprob(model, prompts, ids, batch_size=1), got, atol=1e-5)
    assert torch.isnan(evaluate.continuation_logprob(model, prompts[:1], [[]]))[0]


def test_topic_sweep_moves_text_onto_the_topic_and_scores_each_method(tinyworld):
    model, _ = tinyworld
    suite = load_suite("tinyworld")
    hook = "blocks.2.hook_resid_post"
    sae = sae_mod.load_saes([2], source="tinyworld", model=model)[2]
    labels = explain_eval.labels_for(model, sae, suite)
    feats = {"ocean": explain_eval.features_with_label(labels, "topic:ocean")}
    assert feats["ocean"], "the shipped layer-2 SAE has ocean features"
    prompts = ts.neutral_prompts(suite, 8, 0)
    assert all(p.startswith("text : ") and len(p.split()) == 4 for p in prompts)
    cfg = ts.TopicSteeringConfig(alphas=(64.0,), rel_strengths=(1.0,), max_new_tokens=6, max_fluency_drop=5.0)
    sweep, table = ts.topic_sweep(model, sae, hook, suite, feats, prompts[:4], prompts[4:], cfg, n_texts=20)
    assert set(sweep.method) == {"amplify", "calibrate", "meandiff"} and len(sweep) == 3
    t = table.set_index("method")
    assert set(t.index) == {"none", "prompting", "amplify", "calibrate", "meandiff"}
    assert t.loc["none", "topic_rate"] <= 0.25  # neutral prompts stay off topic
    assert t.loc["meandiff", "topic_rate"] >= 0.75 and t.loc["calibrate", "topic_rate"] >= 0.75
    assert (t.fluency < 0).all()
    m = ts.summary_metrics(table)
    assert m["n_topics_steered"] == 1 and m["meandiff_topic_rate"] == t.loc["meandiff", "topic_rate"]
    with pytest.raises(ValueError, match="resid_post"):
        ts.mean_residual_norm(model, "blocks.2.attn.hook_z", ["text : the"])
    with pytest.raises(ValueError, match="unknown topic-steering"):
        ts.TopicSteeringConfig(methods=("amplify", "clamp"))


def test_the_sweeps_pooled_topic_vector_is_topic_vector(tinyworld):
    """topic_sweep pools the other topics' token sums instead of harvesting them again for every topic: the same
    vector as topic_vector over the concatenated texts."""
    model, _ = tinyworld
    suite = load_suite("tinyworld")
    hook = "blocks.2.hook_resid_post"
    texts = {t: [e.prompt for e in suite.topic_texts(48, 0) if e.meta["topic"] == t][:4] for t in suite.topics()}
    others = [x for t, ts in texts.items() if t != "music" for x in ts]
    want = ts.topic_vector(model, hook, texts["music"], others)
    got = ts.topic_vectors({t: ts._residuals(model, hook, x) for t, x in texts.items()})["music"]
    assert torch.allclose(got, want, atol=1e-5)
