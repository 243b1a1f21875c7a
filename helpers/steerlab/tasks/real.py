"""The real-model task suite (``real``): facts, knowledge conflicts, topics, multiple choice, arithmetic and an
English corpus for a small base model such as Gemma 3 270M, read from ``data/real/`` (see its README for sources,
licences and the measured rates).

Prompt formats (a 270M base model needs demonstrations; every demonstration uses the question's relation):

* closed book: ``Q: What is the capital of France?\\nA: Paris\\n\\nQ: ...\\nA: ...\\n\\nQ: What is the capital of
  Peru?\\nA:`` (two demonstrations);
* conflict (NQSwap-style): a closed-book demonstration, one whose context states its true object, then
  ``Context: The capital of Peru is Nairobi.\\nQ: What is the capital of Peru?\\nA:``; the substituted object is
  another kept fact's object of the same relation;
* multiple choice: two demonstrations, then the question, options ``A.`` to ``D.`` and ``Answer:``;
* arithmetic: three demonstrations ``7 + 15 = 22``, one per line, addends 1 to 20 (``ADDEND_MAX``).

Only facts the model answers closed-book in that format (``facts_kept.json``, built by
:mod:`steerlab.tasks.build_real`) are asked or put in conflict. Conflicts are split by subject into ``fit``,
``select`` and ``eval`` (``SPLIT_SHARES``): no subject (and so no demonstration subject) is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from steerlab.core.text import answer_span, normalize_answer
from steerlab.tasks.base import Example, TaskSuite

log = logging.getLogger(__name__)

SPLITS = ("fit", "select", "eval")
#: share of subjects in each conflict split (by a hash of the normalised subject)
SPLIT_SHARES = {"fit": 0.4, "select": 0.2, "eval": 0.4}
#: the largest addend of the arithmetic task (3-shot ``a + b = c``; the frozen model scores 0.48 at 20)
ADDEND_MAX = 20
LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Relation:
    """How one relation is asked and stated. Fields: ``question`` (template with ``{subject}``), ``statement``
    (a sentence with ``{subject}`` and ``{object}``, the conflict context)."""

    question: str
    statement: str


RELATIONS: dict[str, Relation] = {
    "capital": Relation("What is the capital of {subject}?", "The capital of {subject} is {object}."),
    "currency": Relation("What is the currency of {subject}?", "The currency of {subject} is the {object}."),
    "language": Relation("What is the official language of {subject}?",
                         "The official language of {subject} is {object}."),
    "continent": Relation("On which continent is {subject}?", "{subject} is in {object}."),
    "symbol": Relation("What is the chemical symbol of {subject}?", "The chemical symbol of {subject} is {object}."),
    "author": Relation("Who wrote {subject}?", "{subject} was written by {object}."),
    "inventor": Relation("Who invented {subject}?", "{subject} was invented by {object}."),
    "city_country": Relation("In which country is {subject}?", "{subject} is in {object}."),
    "painter": Relation("Who painted {subject}?", "{subject} was painted by {object}."),
}


@dataclass(frozen=True)
class Fact:
    """One subject-relation-object fact of ``facts.jsonl``. ``aliases``: further accepted answers; ``source``:
    where the fact comes from."""

    id: str
    subject: str
    relation: str
    object: str
    aliases: tuple[str, ...] = ()
    source: str = ""

    @property
    def golds(self) -> tuple[str, ...]:
        return (self.object, *self.aliases)

    def question(self) -> str:
        return RELATIONS[self.relation].question.format(subject=self.subject)

    def statement(self, obj: str | None = None) -> str:
        """The fact as a sentence, with ``obj`` (a substituted object) in place of the true one if given."""
        text = RELATIONS[self.relation].statement.format(subject=self.subject, object=obj or self.object)
        return text[0].upper() + text[1:]


@dataclass
class LetterExample(Example):
    """A multiple-choice example: scored on the option letter itself. SQuAD normalisation drops the article
    "a", so ``exact_match`` would take any empty answer for option A; this compares the first character of the
    answer span instead."""

    def score(self, completion: str) -> bool:
        span = answer_span(completion).strip(string.punctuation + string.whitespace + "()")
        return span[:1].upper() == self.answer and (len(span) == 1 or not span[1].isalpha())


def real_dir() -> Path:
    """``DATA_DIR / "real"``. Imported when called: ``steerlab.models``' package import loads torch, and this
    module stays light to import."""
    from steerlab.models.paths import DATA_DIR

    return DATA_DIR / "real"


def split_of(subject: str) -> str:
    """The conflict split of a subject: a stable hash of its normalised text, cut at ``SPLIT_SHARES``."""
    h = int(hashlib.sha256(normalize_answer(subject).encode()).hexdigest()[:8], 16) / 16 ** 8
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_SHARES[name]
        if h < edge:
            return name
    return SPLITS[-1]


def qa_block(question: str, answer: str | None, context: str | None = None) -> str:
    """One ``[Context: ...\\n]Q: ...\\nA: ...`` block; ``answer=None`` leaves ``A:`` open for the model."""
    head = f"Context: {context}\n" if context else ""
    return f"{head}Q: {question}\nA:" + (f" {answer}" if answer is not None else "")


class RealSuite(TaskSuite):
    """The tasks of ``data/real/`` (``data_dir``) behind the :class:`TaskSuite` interface. ``kept_only=False``
    asks every written fact, not only those the model was measured to know (used to build the kept filter).
    ``data_dir`` defaults to :func:`real_dir`."""

    name = "real"

    def __init__(self, data_dir: str | Path | None = None, kept_only: bool = True):
        self.data_dir = Path(data_dir) if data_dir is not None else real_dir()
        self.kept_only = kept_only

    # ---- data -------------------------------------------------------------------------------------------------
    @cached_property
    def all_facts(self) -> list[Fact]:
        """Every fact of ``facts.jsonl``, in file order."""
        with open(self.data_dir / "facts.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        facts = [Fact(r["id"], r["subject"], r["relation"], r["object"], tuple(r.get("aliases", ())),
                      r.get("source", "")) for r in rows]
        unknown = {f.relation for f in facts} - set(RELATIONS)
        if unknown:
            raise ValueError(f"facts.jsonl has relations {sorted(unknown)} without a template; add them to RELATIONS")
        return facts

    @cached_property
    def kept_ids(self) -> set[str] | None:
        """Ids of the facts the model answers closed-book (``facts_kept.json``); ``None`` when not built yet."""
        path = self.data_dir / "facts_kept.json"
        if not path.is_file():
            return None
        return set(json.loads(path.read_text(encoding="utf-8"))["kept"])

    @cached_property
    def kept_facts(self) -> list[Fact]:
        """The facts asked and put in conflict: the kept ones (all of them if ``kept_only`` is off or no filter is
        built yet, with a warning)."""
        if not self.kept_only:
            return list(self.all_facts)
        if self.kept_ids is None:
            log.warning("no %s: using every fact (run steerlab.tasks.build_real kept)", self.data_dir / "facts_kept.json")
            return list(self.all_facts)
        return [f for f in self.all_facts if f.id in self.kept_ids]

    def _by_relation(self, facts: list[Fact]) -> dict[str, list[Fact]]:
        out: dict[str, list[Fact]] = {}
        for f in facts:
            out.setdefault(f.relation, []).append(f)
        return out

    @cached_property
    def topic_data(self) -> dict[str, dict]:
        """``{topic: {"words": [...], "sentences": [...]}}`` from ``topics.json``."""
        return json.loads((self.data_dir / "topics.json").read_text(encoding="utf-8"))

    def data_stats(self, tokenizer=None) -> dict[str, float]:
        """``n_facts`` (written), ``n_kept_facts``, ``kept_fact_share`` (the kept filter's own measured share,
        ``facts_kept.json``; NaN before it is built), ``n_relations``, ``n_corpus_texts`` and, with a tokenizer,
        ``corpus_tokens``: the tokens of every text :meth:`texts` draws from, without BOS."""
        kept = json.loads((self.data_dir / "facts_kept.json").read_text(encoding="utf-8")) if self.kept_ids else {}
        pool = self.corpus_pool()
        out = {"n_facts": len(self.all_facts), "n_kept_facts": len(self.kept_facts) if self.kept_ids else 0,
               "kept_fact_share": float(kept.get("kept_share", float("nan"))),
               "n_relations": len({f.relation for f in self.all_facts}), "n_corpus_texts": len(pool)}
        if tokenizer is not None:
            out["corpus_tokens"] = sum(len(ids) for ids in tokenizer(pool, add_special_tokens=False)["input_ids"])
        return out

    # ---- prompts ----------------------------------------------------------------------------------------------
    def closed_book(self, fact: Fact, demos: list[Fact]) -> Example:
        """The closed-book example of ``fact`` after the demonstrations ``demos`` (same relation)."""
        blocks = [qa_block(d.question(), d.object) for d in demos] + [qa_block(fact.question(), None)]
        return Example("closed_book", "\n\n".join(blocks), fact.object,
                       {"subject": fact.subject, "relation": fact.relation, "fact_id": fact.id},
                       answers=fact.aliases, max_new_tokens=6)

    def conflict(self, fact: Fact, substitute: str, demos: list[Fact], split: str = "") -> Example:
        """The knowledge conflict of ``fact`` whose context states ``substitute``, after two demonstrations: the
        first closed-book, the second with a context that states its true object (so it agrees with context and
        memory alike). Measured on Gemma 3 270M this mix gives both behaviours (``data/real/README.md``):
        two context demonstrations make it follow the context, two closed-book ones mostly memory."""
        first, second = demos
        blocks = [qa_block(first.question(), first.object),
                  qa_block(second.question(), second.object, second.statement()),
                  qa_block(fact.question(), None, fact.statement(substitute))]
        return Example("conflict", "\n\n".join(blocks), substitute,
                       {"context_value": substitute, "memory_value": fact.object, "memory_aliases": fact.aliases,
                        "relation": fact.relation, "subject": fact.subject, "fact_id": fact.id, "split": split},
                       max_new_tokens=6)

    def _demos(self, rng: random.Random, fact: Fact, pool: list[Fact], k: int = 2) -> list[Fact]:
        others = [d for d in pool if d.relation == fact.relation and d.subject != fact.subject]
        return rng.sample(others, k)

    @staticmethod
    def _differs(obj: str, fact: Fact) -> bool:
        return normalize_answer(obj) not in {normalize_answer(g) for g in fact.golds}

    # ---- TaskSuite --------------------------------------------------------------------------------------------
    def facts(self, n: int, seed: int = 0) -> list[Example]:
        """``n`` closed-book questions on kept facts, each after two demonstrations of its relation (kept facts,
        other subjects); every fact once before any repeats."""
        pool = self.kept_facts
        by_rel = self._by_relation(pool)
        usable = [f for f in pool if len(by_rel[f.relation]) >= 3]
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            order = rng.sample(usable, len(usable))
            out += [self.closed_book(f, self._demos(rng, f, pool)) for f in order[: n - len(out)]]
        return out

    def conflict_pairs(self, split: str = "eval") -> list[tuple[Fact, str]]:
        """Every possible conflict of a split: (kept fact of the split, substituted object), the object another
        kept fact's of the same relation (any split), distinct from the fact's own answers. Sorted by fact id."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; use one of {SPLITS}")
        by_rel = self._by_relation(self.kept_facts)
        objects = {r: sorted({f.object for f in fs}) for r, fs in by_rel.items()}
        in_split = self._by_relation([f for f in self.kept_facts if split_of(f.subject) == split])
        return [(f, o) for r, fs in sorted(in_split.items()) if len(fs) >= 3
                for f in sorted(fs, key=lambda f: f.id) for o in objects[r] if self._differs(o, f)]

    def conflicts(self, n: int, seed: int = 0, split: str = "eval") -> list[Example]:
        """``n`` knowledge conflicts of ``split`` (``fit``/``select``/``eval``: disjoint subjects), each after two
        demonstrations from the same split and relation. Distinct (fact, substitute) pairs until they run out;
        the relation is drawn uniformly first, so large relations do not crowd out small ones."""
        pairs = self.conflict_pairs(split)
        rng = random.Random(seed + 7919 * (1 + SPLITS.index(split)))
        split_facts = [f for f in self.kept_facts if split_of(f.subject) == split]
        by_rel: dict[str, list[tuple[Fact, str]]] = {}
        for fact, sub in pairs:
            by_rel.setdefault(fact.relation, []).append((fact, sub))
        queues = {r: rng.sample(ps, len(ps)) for r, ps in sorted(by_rel.items())}
        out: list[Example] = []
        while len(out) < n and queues:
            rel = rng.choice(sorted(queues))
            fact, sub = queues[rel].pop()
            if not queues[rel]:
                queues[rel] = rng.sample(by_rel[rel], len(by_rel[rel]))  # all used: start another round
            out.append(self.conflict(fact, sub, self._demos(rng, fact, split_facts), split))
        return out

    def topics(self) -> dict[str, list[str]]:
        return {t: list(d["words"]) for t, d in self.topic_data.items()}

    def topic_texts(self, n: int, seed: int = 0) -> list[Example]:
        """``n`` paragraphs of 3-5 sentences about one topic each (topics in turn, sentences sampled)."""
        rng = random.Random(seed)
        names = sorted(self.topic_data)
        out = []
        for i in range(n):
            t = names[(i + seed) % len(names)]
            sents = rng.sample(self.topic_data[t]["sentences"], rng.randint(3, 5))
            out.append(Example("topic", " ".join(sents), "", {"topic": t}))
        return out

    def texts(self, n: int, seed: int = 0) -> list[str]:
        """``n`` English texts (median about 46 Gemma tokens, 90% within 24-98): library documentation
        (``corpus.jsonl``), fact paragraphs and topic paragraphs, shuffled by ``seed``; repeats after
        ``len(corpus_pool())`` texts."""
        pool = self.corpus_pool()
        rng = random.Random(seed)
        out: list[str] = []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    def corpus_pool(self) -> list[str]:
        """Every text :meth:`texts` draws from, in a fixed order: the ``corpus.jsonl`` rows, then paragraphs of
        six fact statements (all facts, true objects), then four-sentence topic paragraphs."""
        return self._corpus

    @cached_property
    def _corpus(self) -> list[str]:
        with open(self.data_dir / "corpus.jsonl", encoding="utf-8") as fh:
            docs = [json.loads(line)["text"] for line in fh if line.strip()]
        rng = random.Random(0)
        facts = rng.sample(self.all_facts, len(self.all_facts))
        docs += [" ".join(f.statement() for f in facts[i:i + 6]) for i in range(0, len(facts), 6)]
        for t in sorted(self.topic_data):
            sents = self.topic_data[t]["sentences"]
            docs += [" ".join(rng.sample(sents, 4)) for _ in range(len(sents))]
        return docs

    def mcqa(self, n: int, seed: int = 0) -> list[Example]:
        """``n`` four-option questions on kept facts (distractors: other objects of the relation), after two
        answered demonstrations of the same relation; the answer is the option letter (``meta['letter']``)."""
        pool = self.kept_facts
        by_rel = self._by_relation(pool)
        objects = {r: sorted({f.object for f in fs}) for r, fs in by_rel.items()}
        usable = [f for f in pool if len(by_rel[f.relation]) >= 3 and len(objects[f.relation]) >= 4]
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            fact = usable[rng.randrange(len(usable))]
            blocks = []
            for f in self._demos(rng, fact, pool) + [fact]:
                opts = rng.sample([o for o in objects[f.relation] if self._differs(o, f)], 3) + [f.object]
                rng.shuffle(opts)
                letter = LETTERS[opts.index(f.object)]
                body = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, opts))
                blocks.append(f"Q: {f.question()}\n{body}\nAnswer:" + (f" {letter}" if f is not fact else ""))
            out.append(LetterExample("mcqa", "\n\n".join(blocks), letter,
                                     {"letter": letter, "options": opts, "gold_value": fact.object,
                                      "subject": fact.subject, "relation": fact.relation}, max_new_tokens=2))
        return out

    def reasoning(self, n: int, seed: int = 0) -> list[Example]:
        """``n`` additions of two numbers from 1 to 20, one per line after three demonstrations ``a + b = c``
        (``meta['result']``). Format and range are where the frozen model has room both ways (measured on 60
        prompts: 0.48 here; 0.0 for two-digit addends in a ``Q: ... =\\nA:`` format, 0.77 for one-digit ones)."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            nums = [(rng.randint(1, ADDEND_MAX), rng.randint(1, ADDEND_MAX)) for _ in range(4)]
            lines = [f"{a} + {b} = {a + b}" for a, b in nums[:3]]
            a, b = nums[3]
            lines.append(f"{a} + {b} =")
            out.append(Example("reasoning", "\n".join(lines), str(a + b), {"result": a + b, "numbers": [a, b]},
                               max_new_tokens=4))
        return out

    def requests(self, n: int, seed: int = 0, harmful: bool | None = None,
                 wrapped: bool | None = None) -> None:
        """A base model never refuses: no request task."""
        return None

