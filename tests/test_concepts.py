import pandas as pd
import pytest
import torch

from steerlab.evals import concepts as C
from steerlab import models
from steerlab import sae as S
from steerlab.world import ATTRIBUTES, HARMFUL, TOPICS

torch.set_num_threads(1)


def test_auroc_matches_hand_computed():
    acts = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    labels = [True, True, False, False]
    au = C.auroc_per_feature(acts, labels)
    assert au[0] == pytest.approx(1.0)  # perfect separation
    # feature 1: pos {0,1} vs neg {1,1}: pairs (0>1? no)x2, (1=1 tie)x2 -> (0 + 0.5*2) / 4
    assert au[1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive and negative"):
        C.auroc_per_feature(acts, [True] * 4)


def test_world_concepts_labels_follow_ground_truth():
    _, world = models.load_tinyworld()
    cs = {c.name: c for c in C.world_concepts(world, n=16)}
    assert len(cs) == len(TOPICS) + 1 + 1 + len(HARMFUL) + len(ATTRIBUTES)
    for c in cs.values():
        assert 0 < sum(c.labels) < len(c.labels), c.name
        for prompt, pos in c.items:
            assert 1 <= pos <= len(prompt.split())
    for (prompt, pos), lab in zip(cs["harm:poison"].items, cs["harm:poison"].labels):
        assert (prompt.split()[pos - 1] in HARMFUL["poison"]) == lab
    for (prompt, pos), lab in zip(cs["attribute:pet"].items, cs["attribute:pet"].labels):
        assert prompt.split()[pos - 1] in ATTRIBUTES and (prompt.split()[pos - 1] == "pet") == lab
    ks = cs["knowledge_source"]
    assert all(" report says " in p for p, _ in ks.items)
    for (prompt, pos), lab in zip(ks.items, ks.labels):  # read at the "." closing the five checks
        words = prompt.split()
        assert words[pos - 1] == "." and words[pos - 7] == ":" and words[pos - 8] == "checks"
        assert lab == (words[pos - 6: pos - 1].count("confirm") >= 3)


def test_planted_feature_is_found():
    """A hand-built SAE whose feature 0 reads the refusal direction must be the best refusal detector."""
    model, world = models.load_tinyworld()
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    refusal, _, direction = _refusal_direction(model, world, 40)
    with torch.no_grad():
        sae.W_enc[:, 0] = direction / direction.norm()
        sae.b_enc[0] = 1e4  # never clipped by the ReLU: the score is the projection itself
        sae.W_enc[:, 1] = -direction / direction.norm()  # the anti-detector
        sae.b_enc[1] = 1e4
    au = C.auroc_per_feature(C.feature_activations(model, sae, refusal.items, pre_topk=True), refusal.labels)
    assert au[0] > 0.99 and au[1] < 0.01


def _refusal_direction(model, world, n):
    """The refusal concept, its residuals at the default layer and the refused-minus-answered mean difference."""
    refusal = next(c for c in C.world_concepts(world, n=n) if c.name == "refusal")
    x = torch.stack([_resid(model, p, pos) for p, pos in refusal.items])
    y = torch.tensor(refusal.labels)
    return refusal, x, x[y].mean(0) - x[~y].mean(0)


def _resid(model, prompt, pos):
    _, cache = model.run_with_cache(model.to_tokens(prompt), names_filter=S.hook_name_for(S.DEFAULT_LAYER))
    return cache[S.hook_name_for(S.DEFAULT_LAYER)][0, pos]


def test_concept_table_and_feature_concepts_agree():
    model, world = models.load_tinyworld()
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    aurocs = pd.DataFrame([[0.2, 0.97, 0.5], [0.6, 0.4, 0.99]], index=["topic:music", "refusal"], columns=[0, 1, 2])
    table = C.concept_table(model, sae, world, n=16, aurocs=aurocs)
    assert table.loc["topic:music", "feature"] == 1 and table.loc["topic:music", "runner_up_auroc"] == 0.5
    assert table["detected"].tolist() == [True, True] and table.loc["refusal", "kind"] == "behaviour"
    assert C.detected_fraction(table) == 1.0
    aurocs = pd.DataFrame([[0.2, 0.97, 0.5], [0.6, 0.4, 0.99]], index=["topic:music", "refusal"],
                                            columns=[0, 1, 2])
    fc = C.feature_concepts(aurocs=aurocs)
    assert fc[1] == ("topic:music", pytest.approx(0.97)) and fc[2][0] == "refusal" and fc[0][0] == "refusal"
    with pytest.raises(ValueError, match="precomputed"):
        C.feature_concepts()


def test_attribute_by_format_shape():
    model, world = models.load_tinyworld()
    t = C.attribute_by_format(model, S.load_sae(layer=S.DEFAULT_LAYER), world, n=12)
    assert list(t.columns) == ["closed_book", "open_book", "mcqa", "all formats"] and list(t.index) == list(ATTRIBUTES)
    assert ((t > 0.5) & (t <= 1.0)).all().all()


def test_feature_concepts_sparse_code_drops_a_feature_that_never_fires():
    """A feature whose pre-top-k score ranks refusals perfectly but which never makes the top-k cut is a refusal
    detector by its pre-top-k score and carries nothing in the SAE's own code (every AUROC 1/2)."""
    model, world = models.load_tinyworld()
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    _, x, direction = _refusal_direction(model, world, 16)
    with torch.no_grad():
        sae.W_enc[:, 0] = 1e-4 * direction / direction.norm()  # a tiny score: always below the k-th largest
        sae.b_enc[0] = 1.0
    assert not (sae.encode(x)[:, 0] > 0).any()
    pre = C.feature_concepts(model, sae, world, n=16, pre_topk=True)
    sparse = C.feature_concepts(model, sae, world, n=16, pre_topk=False)
    assert pre[0][0] == "refusal" and pre[0][1] > 0.99
    assert sparse[0][1] == pytest.approx(0.5)


def test_source_by_position_finds_the_latent_where_the_checks_end():
    """The shipped SAE has a feature that reads the knowledge source once the checks are read (AUROC >= 0.95 at
    the closing "."), while at the last position, where the answer value sits, no feature does."""
    model, world = models.load_tinyworld()
    t = C.source_by_position(model, S.load_sae(layer=S.DEFAULT_LAYER), world, n=120)
    assert t["is_concept"].sum() == 1 and t.loc[t.is_concept, "word"].item() == "."
    assert t.loc[t.is_concept, "auroc"].item() >= 0.95
    assert t["auroc"].iloc[-1] < 0.8 and t["word"].iloc[-1] == ":"


class _TopicSuite:
    """A suite without a world (as a real model's): topics and topic texts only."""

    name = "fake"

    def __init__(self, world):
        self.world_ = world

    def topics(self):
        return {t: list(ws) for t, ws in list(TOPICS.items())[:3]}

    def topic_texts(self, n, seed=0):
        import random

        rng = random.Random(seed)
        names = list(self.topics())
        return [self.world_.topic(rng, names[i % len(names)]) for i in range(n)]


def test_suite_concepts_are_the_suite_topics_read_from_TOPIC_START():
    model, world = models.load_tinyworld()
    suite = _TopicSuite(world)
    cs = C.concepts_of(model, suite, n=12)
    assert [c.name for c in cs] == [f"topic:{t}" for t in sorted(suite.topics())]
    texts = suite.topic_texts(12)
    n_tok = [len(model.tokenizer(e.prompt, add_special_tokens=False)["input_ids"]) for e in texts]
    assert len(cs[0].items) == sum(n - C.TOPIC_START + 1 for n in n_tok)
    assert min(p for _, p in cs[0].items) == C.TOPIC_START  # <bos> and the first tokens never read
    first = sorted(suite.topics())[0]
    assert sum(cs[0].labels) == sum(n - C.TOPIC_START + 1 for e, n in zip(texts, n_tok) if e.meta["topic"] == first)
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    table = C.concept_table(model, sae, suite, n=12)
    assert list(table.index) == [c.name for c in cs] and (table["kind"] == "topic").all()
    assert table["auroc"].min() > 0.8  # tinyworld's topic features detect its topics on these texts too


def test_sparse_probe_picks_the_mean_difference_latents_and_scores_held_out_prompts():
    """Latent 3 carries the label (with noise), latent 0 is large but label-blind, the rest is noise: k=1 must
    choose latent 3 and reach near-perfect held-out accuracy, while a probe forced onto latent 0 would sit near
    chance; positions of one prompt never straddle the split; an imbalanced concept is balanced (chance 0.5)."""
    g = torch.Generator().manual_seed(0)
    n = 600
    y = torch.rand(n, generator=g) < 0.2  # imbalanced: 20 % positive (majority guess: 0.8)
    acts = torch.rand(n, 6, generator=g) * 0.3
    acts[:, 0] = torch.rand(n, generator=g) * 5.0
    acts[:, 3] += y.float() * 1.0
    groups = [f"p{i // 3}" for i in range(n)]
    accs = C.sparse_probe(acts, y.tolist(), groups, ks=(1, 2))
    assert accs[1] > 0.97 and accs[2] > 0.97
    shuffled = C.sparse_probe(acts, y[torch.randperm(n, generator=g)].tolist(), groups, ks=(1,))
    assert 0.35 < shuffled[1] < 0.65  # balanced test set: no label signal -> chance, not the 0.8 majority
    with pytest.raises(ValueError, match="both sides"):
        C.sparse_probe(acts, [True] * n, groups)


def test_sparse_probe_table_on_the_shipped_sae_has_every_concept():
    model, world = models.load_tinyworld()
    sae = S.load_sae("tinyworld", layer=2)
    table = C.sparse_probe_table(model, sae, world, n=24, ks=(1, 5))
    assert {"k1", "k5"} <= set(table.columns) and len(table) == len(C.world_concepts(world, n=24))
    assert ((table["k1"] >= 0) & (table["k1"] <= 1)).all()
    assert table["k5"].mean() >= table["k1"].mean() - 0.05  # five latents do not do worse than one


def test_sparse_probe_table_leaves_out_a_concept_that_cannot_be_split_by_prompt():
    """One prompt holds every positive: no held-out split exists, so its row is NaN and the mean skips it."""
    class OneTopicPrompt:
        def topic_texts(self, n, seed):
            from steerlab.tasks.base import Example
            words = list(TOPICS["music"])
            return [Example(task="topic", prompt="text : " + " ".join(words[i:i + 4]), answer="",
                            meta={"topic": "a" if i == 0 else "b"}) for i in range(6)]

        def topics(self):
            return {"a": [], "b": []}

    model, _ = models.load_tinyworld()
    sae = S.load_sae("tinyworld", layer=2)
    table = C.sparse_probe_table(model, sae, OneTopicPrompt(), ks=(1,))
    assert table["k1"].isna().all()  # topic:a has one positive prompt, topic:b one negative prompt


def test_topic_concepts_share_one_harvest_and_match_the_per_concept_aurocs(monkeypatch):
    """A real model's topic concepts read the same positions: one model pass for all of them, and the AUROCs equal
    those of a harvest per concept."""
    model, world = models.load_tinyworld()
    suite = _TopicSuite(world)
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    cs = C.concepts_of(model, suite, n=12)
    expected = {c.name: C.auroc_per_feature(C.feature_activations(model, sae, c.items, True), c.labels) for c in cs}
    calls = []
    real = C.feature_activations
    monkeypatch.setattr(C, "feature_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    aurocs = C.concept_aurocs(model, sae, suite, n=12)
    assert len(calls) == 1 and len(cs) == 3
    for name, au in expected.items():
        assert aurocs.loc[name].to_numpy() == pytest.approx(au)
    assert len(set(map(tuple, aurocs.to_numpy().round(6)))) == 3  # the labels still differ per topic
