"""MI explanations: the formulas on a hand-computed example, chunked == naive, the baselines and the labeller."""

import math
from types import SimpleNamespace

import pytest
import torch

from steerlab import explain
from steerlab.evals import explanations as explain_eval
from steerlab.explain import ExplainConfig, Explanations

LN3 = math.log(3.0)
# a(c, w) = S @ E^T = [[ln 3, 0, 0], [0, ln 3, 0]]: 2 features, 3 words
S = torch.tensor([[LN3, 0.0], [0.0, LN3]])
E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
WORDS = ["w0", "w1", "w2"]


def test_scores_match_hand_computation():
    # p(w|c0) = (3, 1, 1)/5; p(c|w0) = (3, 1)/4, p(c|w1) = (1, 3)/4, p(c|w2) = (1, 1)/2; K = 2
    # score = p(w|c) * log(K p(c|w)): w0: 0.6 ln 1.5, w1: 0.2 ln 0.5, w2: 0.2 ln 1 = 0
    ex = explain.mi_explain(S, E, WORDS, ExplainConfig(top_n=3))
    assert ex.indices.tolist() == [[0, 2, 1], [1, 2, 0]]
    assert ex.words_of(0) == ["w0", "w2", "w1"]
    torch.testing.assert_close(ex.scores[0], torch.tensor([0.6 * math.log(1.5), 0.0, 0.2 * math.log(0.5)]))


def test_temperatures_enter_as_hand_computed():
    # alpha = 2: p(w|c0) = (sqrt 3, 1, 1)/(sqrt 3 + 2); beta = 0.5: p(c|w0) = (9, 1)/10
    ex = explain.mi_explain(S, E, WORDS, ExplainConfig(alpha=2.0, beta=0.5, top_n=3))
    p = math.sqrt(3) / (math.sqrt(3) + 2)
    assert ex.scores[0, 0].item() == pytest.approx(p * math.log(2 * 0.9), rel=1e-5)
    q = 1 / (math.sqrt(3) + 2)
    assert ex.scores[0, 2].item() == pytest.approx(q * math.log(2 * 0.1), rel=1e-5)


def test_chunked_equals_naive_loop():
    g = torch.Generator().manual_seed(0)
    S_, E_ = torch.randn(23, 8, generator=g) * 3, torch.randn(17, 8, generator=g)
    words = [f"w{i}" for i in range(17)]
    cfg = ExplainConfig(alpha=0.7, beta=1.3, top_n=5, chunk_size=4)
    fast, slow = explain.mi_explain(S_, E_, words, cfg), explain.mi_explain_naive(S_, E_, words, cfg)
    assert torch.equal(fast.indices, slow.indices)
    torch.testing.assert_close(fast.scores, slow.scores)
    some = explain.mi_explain_naive(S_, E_, words, cfg, features=[3, 20])
    assert torch.equal(some.indices, fast.indices[[3, 20]])


def test_ranking_survives_underflow():
    # a gap of 200 makes p(w|c) underflow to 0 in float32 for all but one word; the order must still be
    # by p(w|c) * PMI, i.e. here by a(c, w) among the positive-PMI words
    S_ = torch.tensor([[1.0], [-1.0]])
    E_ = torch.tensor([[200.0], [120.0], [60.0], [-5.0]])
    ex = explain.mi_explain(S_, E_, list("abcd"), ExplainConfig(top_n=4))
    assert ex.words_of(0) == ["a", "b", "c", "d"]


def test_score_std_equals_the_table_std():
    g = torch.Generator().manual_seed(1)
    S_, E_ = torch.randn(31, 6, generator=g) * 5 + 1, torch.randn(13, 6, generator=g) + 0.5
    want = (S_.double() @ E_.double().T).std(unbiased=False).item()
    assert explain.score_std(S_, E_) == pytest.approx(want, rel=1e-9)


def test_std_scale_makes_explanations_independent_of_the_final_norm_scale(tinyworld):
    """Multiplying the final norm's weight by 10 multiplies every a(c, w) by 10: with scale="std" the words do not
    move; in raw units the softmaxes sharpen and they do (so the scale is not a no-op)."""
    from steerlab import sae as S
    from steerlab.tasks import load_suite

    model, _ = tinyworld
    sae = S.load_sae("tinyworld", layer=S.DEFAULT_LAYER)
    words = explain_eval.vocabulary(load_suite("tinyworld"))
    cfgs = {"std": ExplainConfig(top_n=5), "raw": ExplainConfig(top_n=5, scale="raw")}
    run = lambda name: explain.explain(model, sae, words, cfgs[name], progress=False).indices
    before = {name: run(name) for name in cfgs}
    w = model.ln_final.w.data.clone()
    try:
        model.ln_final.w.data.mul_(10.0)
        after = {name: run(name) for name in cfgs}
    finally:
        model.ln_final.w.data.copy_(w)
    assert (after["std"] == before["std"]).float().mean() > 0.99
    assert (after["raw"] == before["raw"]).float().mean() < 0.9


def released_explain(embeds, vocab, words, topK, alpha=1.0, beta=1.0):
    """The released MIExplainer.explain (JacksonWuxs/SteeringLLMs_with_MIExplanations, MI_explainer.py), line by
    line: the whole [features, words] matrix at once, Python's sort on (score, word, p, log p) tuples."""
    cooccurent = embeds @ vocab.T
    term_freq = torch.softmax(cooccurent / alpha, 1)
    conc_freq = torch.log_softmax(cooccurent / beta, 0)
    scores = term_freq * conc_freq
    out = []
    for term, conc, sc in zip(term_freq, conc_freq, scores):
        pairs = sorted(zip(sc.tolist(), words, term.tolist(), conc.tolist()), reverse=True)
        out.append([w for _, w, _, _ in pairs[:topK]])
    return out


def test_released_rank_reproduces_the_released_code():
    # hand example: literal products w0: 0.6 ln 0.75, w1: 0.2 ln 0.25, w2: 0.2 ln 0.5 -> w2, w0, w1 for c0
    ex = explain.mi_explain(S, E, WORDS, ExplainConfig(top_n=3, rank="released"))
    assert ex.method == "mi_released" and ex.words_of(0) == ["w2", "w0", "w1"]
    torch.testing.assert_close(ex.scores[0], torch.tensor([0.2 * math.log(0.5), 0.6 * math.log(0.75),
                                                           0.2 * math.log(0.25)]))
    assert explain.mi_explain(S, E, WORDS, ExplainConfig(top_n=3)).words_of(0) == ["w0", "w2", "w1"]  # differs
    # random directions, several chunks, temperatures: the released code's word lists, chunked and naive
    g = torch.Generator().manual_seed(1)
    S_, E_ = torch.randn(23, 8, generator=g) * 3, torch.randn(40, 8, generator=g)
    words = [f"{chr(97 + i % 26)}{i}" for i in range(40)]
    cfg = ExplainConfig(alpha=0.7, beta=1.3, top_n=10, chunk_size=4, rank="released")
    want = released_explain(S_, E_, words, 10, 0.7, 1.3)
    assert explain.mi_explain(S_, E_, words, cfg).all_words() == want
    assert explain.mi_explain_naive(S_, E_, words, cfg).all_words() == want
    # underflow: for c0 every product is 0 (p(w|c) underflows to 0 for c, d; log p(c|w) is 0 for a, b), the
    # maximum, so the released sort orders all four by the word, descending; for c1, a and b tie at 0 (p = 0) above
    # c (-7e-27) and d (-4.5e-5), the word c1 points to most
    S_, E_ = torch.tensor([[1.0], [-1.0]]), torch.tensor([[200.0], [120.0], [60.0], [-5.0]])
    assert released_explain(S_, E_, list("abcd"), 4) == [["d", "c", "b", "a"], ["b", "a", "c", "d"]]
    got = explain.mi_explain(S_, E_, list("abcd"), ExplainConfig(top_n=4, rank="released", chunk_size=1))
    assert got.all_words() == [["d", "c", "b", "a"], ["b", "a", "c", "d"]]


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="temperatures"):
        ExplainConfig(alpha=0)
    with pytest.raises(ValueError, match="rank must be one of"):
        ExplainConfig(rank="literal")
    with pytest.raises(ValueError, match="scale must be one of"):
        ExplainConfig(scale="unit")
    with pytest.raises(ValueError, match="embedding"):
        ExplainConfig(embedding="both")
    with pytest.raises(ValueError, match="d_model"):
        explain.mi_explain(S, torch.zeros(3, 5), WORDS)


def _stub_model(kind, w):
    return SimpleNamespace(cfg=SimpleNamespace(normalization_type=kind), ln_final=SimpleNamespace(w=w))


def test_feature_directions_apply_layernorm_without_bias():
    w = torch.tensor([1.0, 2.0, 3.0])
    d = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    s = explain.feature_directions(_stub_model("LN", w), d)
    expected = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3) * w  # centred, unit std, times w
    torch.testing.assert_close(s[0], expected)
    torch.testing.assert_close(s[1], expected)  # the decoder norm does not matter
    rms = explain.feature_directions(_stub_model("RMS", w), d[:1])
    torch.testing.assert_close(rms[0], d[0] / math.sqrt(14 / 3) * w)
    folded = explain.feature_directions(_stub_model("LNPre", None), d[:1])
    torch.testing.assert_close(folded[0], torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3))


def test_word_embeddings_are_unembedding_columns(tinyworld):
    model, _ = tinyworld
    words, E_ = explain.word_embeddings(model, ["guitar", "zzz-not-a-word", "sorry"])
    assert words == ["guitar", "sorry"]
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in words]
    torch.testing.assert_close(E_, model.W_U.detach().T[ids])
    _, E_in = explain.word_embeddings(model, words, "embed")
    torch.testing.assert_close(E_in, model.W_E.detach()[ids])


def test_logit_lens_and_max_activating_on_tinyworld(tinyworld):
    model, world = tinyworld
    d = model.cfg.d_model
    # a stub SAE whose code is the ReLU of the first 6 residual coordinates at layer 0
    sae = SimpleNamespace(W_dec=torch.eye(d)[:6], encode=lambda x: torch.relu(x[..., :6]),
                          cfg=SimpleNamespace(d_sae=6, metadata=SimpleNamespace(hook_name="blocks.0.hook_resid_post")))
    ll = explain.logit_lens(model, sae, top_n=3)
    assert torch.equal(ll.indices, model.W_U.detach()[:6].topk(3, dim=1).indices)
    texts = ["text : guitar the melody", "question : " + world.entities[0] + " color ? answer :"]
    ma = explain.max_activating(model, sae, texts, top_n=2, progress=False)
    tokens = model.to_tokens(texts)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    acts = torch.relu(cache["blocks.0.hook_resid_post"][..., :6])
    best = {}
    for b in range(tokens.shape[0]):
        for p in range(1, tokens.shape[1]):
            t = int(tokens[b, p])
            if t == model.tokenizer.pad_token_id:
                continue
            best[t] = torch.maximum(best.get(t, torch.zeros(6)), acts[b, p])
    table = torch.stack([best.get(t, torch.zeros(6)) for t in range(model.cfg.d_vocab)], 1)
    assert torch.allclose(ma.scores, table.topk(2, dim=1).values)


def _expl(rows):
    words = sorted({w for r in rows for w in r})
    idx = torch.tensor([[words.index(w) for w in r] for r in rows])
    return Explanations("mi", words, idx, torch.zeros(idx.shape))


def test_labeller_precision_and_function_words():
    lex = {"topic:music": ["guitar", "melody", "drum"], "harmful:poison": ["toxin", "venom"],
           "harmful:weapon": ["bomb"], "refusal": ["sorry"]}
    ex = _expl([["sorry", "the", "x1", "x2"], ["guitar", "melody", "the", "a"], ["x1", "x2", "x3", "venom"],
                ["toxin", "bomb", "venom", "x1"]])
    lab = explain_eval.label_features(ex, lex, n=4, min_confidence=0.3)
    assert lab["label"].tolist() == ["refusal", "topic:music", "none", "harmful:poison"]
    assert lab.loc[0, "confidence"] == pytest.approx(1.0)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert lab.loc[1, "confidence"] == pytest.approx((1 + 1 / math.log2(3)) / ideal)
    assert lab.loc[2, "confidence"] == pytest.approx((1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert explain_eval.features_with_label(lab, "harmful") == [3]
    assert explain_eval.features_with_label(lab, "refusal") == [0]
    prec = explain_eval.precision_at_k(ex, {1: "topic:music", 0: "topic:music"}, lex, k=4)
    assert prec.set_index("feature").loc[1, "precision"] == 0.5 and prec.set_index("feature").loc[0, "precision"] == 0
    assert explain_eval.function_word_share(ex, [0, 1], ["the", "a"], k=4) == pytest.approx(3 / 8)


def test_labels_round_trip(tmp_path):
    lab = explain_eval.label_features(_expl([["sorry", "x"]]), {"refusal": ["sorry"]}, n=2)
    explain_eval.write_labels(tmp_path / "labels.json", lab, layer=2)
    back = explain_eval.read_labels(tmp_path / "labels.json")
    assert back.to_dict("records") == lab.to_dict("records")


def test_default_lexicons_follow_the_world(tinyworld):
    _, world = tinyworld
    lex = explain_eval.default_lexicons(world)
    assert lex["refusal"] == ["sorry"] and set(lex["source"]) == set(explain_eval.SOURCE_WORDS) >= {"trusted", "rumor", "report"}
    assert len([k for k in lex if k.startswith("topic:")]) == 8 and "harmful:poison" in lex


def test_topic_truth_keeps_confident_topic_features():
    truth = explain_eval.topic_truth({0: ("topic:music", 0.99), 1: ("topic:sport", 0.9), 2: ("refusal", 0.99)}, 0.95)
    assert truth["is_topic"].tolist() == [True, False, False]
    assert truth.loc[0, "concept"] == "topic:music"


def test_topic_precision_of_the_shipped_sae(tinyworld):
    """Notebook 02's headline in one call: on the shipped default-layer SAE, MI explanations of the topic features
    (truth from the SAE's own sparse code) beat the max-activating tokens; scoring against the pre-top-k truth
    instead, or over the English list instead of the world's lexicon, gives about 0.53 or near 0."""
    from steerlab import sae as S

    model, world = tinyworld
    got = explain_eval.topic_precision(model, S.load_sae("tinyworld", layer=S.DEFAULT_LAYER), world, n_truth=100,
                                       n_corpus=(100, 300))
    assert got["n_topic_features"] > 100
    assert 0.7 <= got["mi_precision_at_10"] <= 1 and got["maxact_precision_at_10"] < got["mi_precision_at_10"] - 0.1


def test_corpus_comes_from_the_suite_and_equals_the_world_draws(tinyworld):
    """The max-activation corpus is the suite's topic texts then its general texts; for tinyworld that is the same
    draws as the world's own samplers (so the tinyworld numbers do not move), whether given the suite or the world."""
    import random

    from steerlab.tasks.tinyworld import TinyworldSuite

    _, world = tinyworld
    rng, stream = random.Random(3), world.training_stream(4)
    expected = [world.topic(rng).prompt for _ in range(5)] + [next(stream) for _ in range(6)]
    assert explain_eval.corpus(TinyworldSuite(world), 5, 6, seed=3) == expected
    assert explain_eval.corpus(world, 5, 6, seed=3) == expected


def test_scores_read_decoded_subword_tokens():
    """A subword tokenizer's decoded tokens keep their leading space and case (" Guitar"): precision, the
    function-word share and the labeller compare them stripped and lower-cased."""
    ex = _expl([[" Guitar", " melody", "The", " x"]])
    lex = {"topic:music": ["guitar", "melody"]}
    assert explain_eval.precision_at_k(ex, {0: "topic:music"}, lex, k=4).precision.tolist() == [0.5]
    assert explain_eval.function_word_share(ex, [0], ["the"], k=4) == pytest.approx(0.25)
    assert explain_eval.label_features(ex, lex, n=4, min_confidence=0.3).label.tolist() == ["topic:music"]


def test_a_real_suite_explains_over_the_english_list():
    """Without a world the explanation vocabulary is data/vocab/english_5000.txt, lexicons keep only words it
    holds, and there are no harmful-topic lexicons (tinyworld's)."""
    from types import SimpleNamespace

    suite = SimpleNamespace(topics=lambda: {"music": ["guitar", "zzzqqq"]}, provides=lambda what: True,
                            function_words=("the",), world=None)
    words = explain_eval.vocabulary(suite)
    assert len(words) >= 4000 and "the" in words
    lex = explain_eval.default_lexicons(suite, words)
    assert lex["topic:music"] == ["guitar"] and not any(k.startswith("harmful:") for k in lex)
    assert "sorry" in lex["refusal"]


def test_best_per_topic_takes_each_topics_strongest_feature():
    truth = explain_eval.topic_truth({0: ("topic:music", 0.7), 1: ("topic:music", 0.9), 2: ("topic:sport", 0.6),
                                      3: ("source", 0.99), 4: ("topic:sport", 0.55)}, min_auroc=0.95)
    assert explain_eval.best_per_topic(truth) == {1: "topic:music", 2: "topic:sport"}
    assert explain_eval.best_per_topic(truth[truth.concept == "source"]) == {}
