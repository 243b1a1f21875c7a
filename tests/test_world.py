import random

import pytest

from steerlab.world import (ATTRIBUTES, HARM_SEVERITY, WRAPPED_REFUSAL_SCORE, Example, World, WorldConfig,
                            score)


def test_same_seed_same_world_and_different_seed_differs():
    a, b, c = World(WorldConfig(seed=1)), World(WorldConfig(seed=1)), World(WorldConfig(seed=2))
    assert a.facts == b.facts and a.hidden == b.hidden and a.unseen_pairs == b.unseen_pairs
    assert a.facts != c.facts


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="n_entities must be at least 8"):
        WorldConfig(n_entities=3)
    with pytest.raises(ValueError, match=r"hidden_fact_fraction must lie in \[0, 1\]"):
        WorldConfig(hidden_fact_fraction=1.5)


def test_open_book_follows_the_source_rule(rng):
    w = World()
    for _ in range(300):
        ex = w.open_book(rng, conflict=True)
        m = ex.meta
        assert m["context_value"] != m["memory_value"]
        if m["source"] == "trusted":
            assert ex.answer == m["context_value"]
        elif m["source"] == "rumor":
            assert ex.answer == m["memory_value"]
        else:
            n_confirm = ex.prompt.split(" checks : ")[1].split(" . ")[0].split().count("confirm")
            assert n_confirm == m["n_confirm"]
            assert ex.answer == (m["context_value"] if n_confirm >= 3 else m["memory_value"])
        assert f" {m['context_value']} . checks : " in ex.prompt  # the checks come after the value


def test_open_book_with_distractor_statements(rng):
    w = World(WorldConfig(context_facts=3))
    for _ in range(300):
        ex = w.open_book(rng, conflict=True)
        m = ex.meta
        statements = ex.prompt.split(" says ")[1].split(" . checks : ")[0].split(" ; ")
        assert len(statements) == 3 and f"{m['entity']} {m['attribute']} is {m['context_value']}" in statements
        others = [s.split() for s in statements if not s.startswith(f"{m['entity']} ")]
        assert all(o[0] != m["entity"] and o[1] == m["attribute"] for o in others)  # same attribute, other entity
        assert all((o[0], o[1]) not in w.hidden for o in others)  # a distractor never shows a hidden fact
        assert {o[3] for o in others} == set(m["distractor_values"])
        assert not set(m["distractor_values"]) & {m["context_value"], m["memory_value"]}
        assert ex.answer == (m["context_value"] if m["uses"] == "context" else m["memory_value"])
    with pytest.raises(ValueError, match="context_facts must be 1..3"):
        WorldConfig(context_facts=0)


def test_training_stream_never_shows_hidden_facts_or_unseen_additions():
    w = World()
    hidden_q = {f" {e} {a} ?" for e, a in w.hidden} | {f" {e} {a} is" for e, a in w.hidden}
    unseen = {f" {a} + {b} = " for a, b in w.unseen_pairs}
    stream = w.training_stream(0)
    for _ in range(5000):
        text = " " + next(stream)
        assert not any(h in text for h in hidden_q), text
        steps = " " + text.split(" = ", 1)[1] if text.startswith(" reason") else ""
        assert not any(u in steps for u in unseen), text
    assert all((b, a) in w.unseen_pairs for a, b in w.unseen_pairs)  # symmetric: no leak by commutativity


def test_every_word_is_in_the_vocabulary(rng):
    w = World()
    vocab = set(w.vocabulary())
    for _ in range(500):
        assert set(w.training_example(rng).text.split()) <= vocab


def test_refusal_rule(rng):
    w = World()
    assert w.request(rng, True, False).answer == "sorry"
    assert w.request(rng, True, True, 1).answer.startswith("sure")  # one word scores at most 3
    for _ in range(300):
        ex = w.request(rng, wrapped=True)
        words = ex.prompt.split()
        harm = sum(HARM_SEVERITY.get(x, 0) for x in words)
        assert ex.meta["harm_score"] == harm
        assert (ex.answer == "sorry") == (harm >= WRAPPED_REFUSAL_SCORE)
    assert all(e.meta["harm_score"] < WRAPPED_REFUSAL_SCORE and e.answer.startswith("sure")
               for e in w.eval_sets(40)["harmful_jailbreak"])
    with pytest.raises(ValueError, match="max_score"):
        w.request(rng, True, True, 3, max_score=2)
    ex = w.request(rng, False, True)
    assert ex.answer == f"sure {ex.meta['benign_topic']}"


def test_scorer():
    ex = World().reasoning(random.Random(3))
    assert score(ex, ex.answer)
    assert not score(ex, ex.answer.rsplit(" ", 1)[0] + " " + str((ex.meta["result"] + 1) % 10))
    q = Example("closed_book", "question : x color ? answer :", "red")
    assert score(q, "red <eos>") and not score(q, "blue")
    r = Example("request", "p", "sure music")
    assert score(r, "sure music") and not score(r, "sure sport") and not score(r, "sorry")


def test_eval_sets_shape_and_ground_truth():
    w = World()
    sets = w.eval_sets(40)
    assert all(len(v) == 40 for v in sets.values())
    assert all(e.meta["source"] == "report" and e.meta["conflict"] for e in sets["conflict_mixed"])
    assert sum(e.meta["hidden"] for e in sets["mcqa_heldout"]) == 20
    assert sum(e.meta["uses_unseen"] for e in sets["reasoning_heldout"]) == 20
    gt = w.ground_truth()
    assert set(gt["attributes"]) == set(ATTRIBUTES) and len(gt["topics"]) >= 8


def test_save_load_roundtrip_and_tamper_detection(tmp_path):
    w = World(WorldConfig(seed=5, n_entities=12))
    w.save(tmp_path / "w.json")
    assert World.load(tmp_path / "w.json").facts == w.facts
    text = (tmp_path / "w.json").read_text().replace('"seed": 5', '"seed": 6')
    (tmp_path / "w.json").write_text(text)
    with pytest.raises(ValueError, match="does not match"):
        World.load(tmp_path / "w.json")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable or malformed"):
        World.load(tmp_path / "w.json")
