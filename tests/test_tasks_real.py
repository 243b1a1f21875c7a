"""The real-model task suite (``steerlab.tasks.real``) on its shipped data: counts, prompt formats, scoring,
disjoint conflict splits and determinism. No model is loaded."""

import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from steerlab.core.text import normalize_answer
from steerlab.models.paths import DATA_DIR
from steerlab.tasks.base import matches
from steerlab.tasks.real import RELATIONS, LetterExample, RealSuite, split_of

REAL = DATA_DIR / "real"


@pytest.fixture(scope="module")
def suite():
    return RealSuite()


def test_fact_data_counts_and_fields(suite):
    facts = suite.all_facts
    assert len(facts) >= 300
    per_rel = Counter(f.relation for f in facts)
    assert len(per_rel) >= 8 and min(per_rel.values()) >= 20, per_rel
    assert len({f.id for f in facts}) == len(facts)
    assert all(f.source and f.object and f.subject for f in facts)
    assert set(per_rel) <= set(RELATIONS)


def test_kept_filter_file_matches_facts(suite):
    kept = json.loads((REAL / "facts_kept.json").read_text())
    ids = {f.id for f in suite.all_facts}
    assert set(kept["kept"]) <= ids
    assert kept["kept_share"] == pytest.approx(len(kept["kept"]) / len(ids), abs=1e-3)
    assert {f.id for f in suite.kept_facts} == set(kept["kept"])
    assert len(suite.kept_facts) >= 150  # enough for the conflict splits
    assert len(RealSuite(kept_only=False).kept_facts) == len(ids)


def _blocks(prompt):
    return prompt.split("\n\n")


def test_closed_book_prompts_have_two_demonstrations_of_the_relation(suite):
    kept = {f.id: f for f in suite.kept_facts}
    objects = {f.object for f in suite.kept_facts}
    for ex in suite.facts(60, seed=3):
        fact = kept[ex.meta["fact_id"]]
        blocks = _blocks(ex.prompt)
        assert len(blocks) == 3 and blocks[-1] == f"Q: {fact.question()}\nA:"
        for demo in blocks[:2]:
            q, a = demo.split("\nA: ")
            assert a in objects and q != f"Q: {fact.question()}"
            assert re.sub(r"\{subject\}.*", "", RELATIONS[fact.relation].question) in q
        assert ex.task == "closed_book" and ex.max_new_tokens >= 4
        assert ex.meta["relation"] == fact.relation and ex.meta["subject"] == fact.subject


def test_closed_book_score_accepts_gold_and_aliases_and_rejects_other_object(suite):
    for ex in suite.facts(40, seed=1):
        assert ex.score(f" {ex.answer}\n\nQ: What is")
        for alias in ex.answers:
            assert ex.score(f" {alias}.")
        rel = [f for f in suite.kept_facts if f.relation == ex.meta["relation"]]
        other = next(f.object for f in rel if normalize_answer(f.object) not in map(normalize_answer, ex.golds))
        assert not ex.score(f" {other}\n")


def test_facts_cover_every_relation_and_are_deterministic(suite):
    a, b, c = suite.facts(200, 0), suite.facts(200, 0), suite.facts(200, 1)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert [e.prompt for e in a] != [e.prompt for e in c]
    assert {e.meta["relation"] for e in a} == {f.relation for f in suite.kept_facts}
    assert all(e.meta["fact_id"] in suite.kept_ids for e in a)


def _demo_facts(suite, prompt):
    """The facts of a conflict prompt's two demonstrations: the first closed-book, the second with a true context."""
    by_question = {f.question(): f for f in suite.kept_facts}
    first, second = _blocks(prompt)[:2]
    q1, a1 = first.split("\nA: ")
    assert q1.startswith("Q: ") and "Context" not in first
    ctx, q2 = second.split("\nQ: ")
    f1, f2 = by_question[q1[3:]], by_question[q2.split("\nA: ")[0]]
    assert a1 == f1.object and ctx == f"Context: {f2.statement()}" and q2.endswith(f"A: {f2.object}")
    return f1, f2


def test_conflict_splits_are_disjoint_by_subject_including_demonstrations(suite):
    subjects = {}
    for split in ("fit", "select", "eval"):
        exs = suite.conflicts(150, seed=0, split=split)
        assert len(exs) == 150
        names = {e.meta["subject"] for e in exs}
        for e in exs:  # demonstration subjects come from the same split and relation
            for demo in _demo_facts(suite, e.prompt):
                assert split_of(demo.subject) == split and demo.relation == e.meta["relation"]
                assert demo.subject != e.meta["subject"]
                names.add(demo.subject)
        assert all(split_of(s) == split for s in names)
        subjects[split] = names
    assert not subjects["fit"] & subjects["select"]
    assert not subjects["fit"] & subjects["eval"]
    assert not subjects["select"] & subjects["eval"]


def test_conflicts_substitute_an_object_of_the_same_relation(suite):
    objects = {}
    for f in suite.kept_facts:
        objects.setdefault(f.relation, set()).add(f.object)
    kept = {f.id: f for f in suite.kept_facts}
    for e in suite.conflicts(200, seed=1, split="eval"):
        m = e.meta
        fact = kept[m["fact_id"]]
        assert normalize_answer(m["context_value"]) != normalize_answer(m["memory_value"])
        assert normalize_answer(m["context_value"]) not in map(normalize_answer, fact.aliases)
        assert m["context_value"] in objects[m["relation"]] and m["memory_value"] == fact.object
        last = _blocks(e.prompt)[-1]
        assert last == f"Context: {fact.statement(m['context_value'])}\nQ: {fact.question()}\nA:"
        assert e.answer == m["context_value"]
        assert matches(f" {m['context_value']}\n", m["context_value"])
        assert not matches(f" {m['memory_value']}\n", m["context_value"])


def test_conflicts_eval_size_relations_and_determinism(suite):
    pairs = suite.conflict_pairs("eval")
    assert len(pairs) >= 200 and len(set((f.id, o) for f, o in pairs)) == len(pairs)
    a = suite.conflicts(300, seed=0, split="eval")
    assert [e.prompt for e in a] == [e.prompt for e in suite.conflicts(300, seed=0, split="eval")]
    assert [e.prompt for e in a] != [e.prompt for e in suite.conflicts(300, seed=1, split="eval")]
    assert [e.prompt for e in a][:50] != [e.prompt for e in suite.conflicts(50, seed=0, split="fit")]
    assert len({e.prompt for e in a}) == len(a)  # distinct until the pairs run out
    rels = {f.relation for f in suite.kept_facts if split_of(f.subject) == "eval"}
    assert {e.meta["relation"] for e in a} == {r for r in rels
                                               if sum(f.relation == r and split_of(f.subject) == "eval"
                                                      for f in suite.kept_facts) >= 3}
    with pytest.raises(ValueError, match="split"):
        suite.conflicts(2, split="train")


def test_topics_vocabularies_and_texts(suite):
    topics = suite.topics()
    assert len(topics) >= 8
    vocab = set((DATA_DIR / "vocab" / "english_5000.txt").read_text().split())
    for t, words in topics.items():
        assert 20 <= len(words) <= 40 and len(set(words)) == len(words), t
        assert sum(w in vocab for w in words) >= 0.9 * len(words), t
        assert len(suite.topic_data[t]["sentences"]) >= 20
    texts = suite.topic_texts(40, seed=0)
    assert Counter(e.meta["topic"] for e in texts).keys() == topics.keys()
    for e in texts:
        sents = suite.topic_data[e.meta["topic"]]["sentences"]
        assert e.task == "topic" and e.answer == ""
        assert sum(s in e.prompt for s in sents) >= 3
    assert [e.prompt for e in texts] == [e.prompt for e in suite.topic_texts(40, seed=0)]


def test_texts_corpus_size_lengths_and_determinism(suite):
    pool = suite.corpus_pool()
    assert sum(len(t.split()) for t in pool) >= 200_000  # about 1.3 Gemma tokens per word: >= 260k tokens
    texts = suite.texts(500, seed=0)
    assert len(texts) == 500 and texts == suite.texts(500, seed=0) and texts != suite.texts(500, seed=1)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= 5 and max(lengths) <= 140 and 20 <= sum(lengths) / len(lengths) <= 100
    assert len(suite.texts(len(pool) + 5, seed=0)) == len(pool) + 5


def test_mcqa_options_letter_and_score(suite):
    for e in suite.mcqa(60, seed=0):
        opts, letter = e.meta["options"], e.meta["letter"]
        assert len(set(opts)) == 4 and opts["ABCD".index(letter)] == e.meta["gold_value"]
        assert e.answer == letter and e.max_new_tokens == 2
        blocks = _blocks(e.prompt)
        assert len(blocks) == 3 and blocks[-1].endswith("\nAnswer:")
        assert all(re.search(r"\nAnswer: [ABCD]$", b) for b in blocks[:2])
        assert e.score(f" {letter}\n") and e.score(f" {letter}.")
        assert not any(e.score(f" {x}\n") for x in "ABCD" if x != letter)
    assert Counter(e.meta["letter"] for e in suite.mcqa(200, seed=0)).keys() == set("ABCD")


def test_letter_a_is_not_matched_by_an_empty_answer():
    e = LetterExample("mcqa", "p", "A", {"letter": "A"}, max_new_tokens=2)
    assert e.score(" A") and e.score("A\n\nQ:")
    assert not e.score("") and not e.score(" the") and not e.score(" B") and not e.score(" Apple")


def test_reasoning_arithmetic(suite):
    from steerlab.tasks.real import ADDEND_MAX

    exs = suite.reasoning(50, seed=0)
    for e in exs:
        a, b = e.meta["numbers"]
        assert e.meta["result"] == a + b and e.answer == str(a + b) and 1 <= min(a, b) and max(a, b) <= ADDEND_MAX
        lines = e.prompt.split("\n")
        assert len(lines) == 4 and lines[-1] == f"{a} + {b} ="
        for demo in lines[:3]:
            x, y, z = map(int, re.fullmatch(r"(\d+) \+ (\d+) = (\d+)", demo).groups())
            assert x + y == z
        assert e.score(f" {a + b}\n1") and not e.score(f" {a + b + 1}\n")
    assert [e.prompt for e in exs] == [e.prompt for e in suite.reasoning(50, seed=0)]
    assert len({e.prompt for e in exs}) > 40


def test_provides_and_load_suite(suite):
    from steerlab.tasks import load_suite

    assert isinstance(load_suite("gemma-3-270m"), RealSuite)
    assert suite.requests(5) is None and not suite.provides("requests")
    for what in ("facts", "conflicts", "topics", "topic_texts", "mcqa", "reasoning", "texts"):
        assert suite.provides(what), what


def test_module_import_is_light():
    code = "import sys, steerlab.tasks.real; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_option_letter_a_is_not_normalised_away():
    from steerlab.core.text import exact_match, normalize_answer

    assert normalize_answer("A") == "a" and normalize_answer("The Nile") == "nile"
    assert exact_match(" A", ["A"]) and not exact_match(" the", ["A"]) and not exact_match("", ["A"])


def test_data_stats_count_the_shipped_facts_and_the_corpus_tokens(suite):
    """The figures notebook 00 reports on a real model: written facts, the kept share, and corpus tokens counted
    by the tokenizer it is given (here one token per word, so the count is the corpus's word count)."""
    words = lambda texts, add_special_tokens=False: {"input_ids": [t.split() for t in texts]}
    s = suite.data_stats(words)
    assert s["n_facts"] == len(suite.all_facts) and s["n_kept_facts"] == len(suite.kept_facts)
    assert s["kept_fact_share"] == pytest.approx(len(suite.kept_facts) / len(suite.all_facts), abs=1e-3)
    assert s["n_relations"] >= 8 and s["n_corpus_texts"] == len(suite.corpus_pool())
    assert s["corpus_tokens"] == sum(len(t.split()) for t in suite.corpus_pool())
    assert "corpus_tokens" not in suite.data_stats()  # no tokenizer, no token count
