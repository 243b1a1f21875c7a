"""Answers as text: SQuAD's normalisation and exact match on decoded completions, for any tokenizer."""

from __future__ import annotations

import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation removed, articles removed, whitespace collapsed.

    One deviation: an answer that is nothing but an article (the option letter ``A``) keeps it, so it is not
    normalised to the empty string that every other article-only answer would then match."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    kept = " ".join(_ARTICLES.sub(" ", text).split())
    return kept or " ".join(text.split())


def answer_span(completion: str) -> str:
    """The answer part of a free completion: its first line, cut at the first sentence end or separator a
    few-shot prompt uses (``.``, ``,``, ``;``, ``Q:``, ``Question``), special tokens such as ``<eos>`` removed."""
    text = re.sub(r"<[^<>\s]+>", " ", completion).strip()
    text = text.split("\n")[0]
    text = re.split(r"[.;,]\s|Q:|Question", text + " ")[0]
    return text.strip()


def exact_match(completion: str, golds: Sequence[str]) -> bool:
    """Whether the answer span of ``completion`` equals one of ``golds`` after :func:`normalize_answer`."""
    pred = normalize_answer(answer_span(completion))
    return any(pred == normalize_answer(g) for g in golds if g)


def conflict_em(examples: Sequence, answers: Sequence[str]) -> tuple[float, float]:
    """``(EM_C, EM_M)`` as in the SPARE paper: the share of ``answers`` whose answer span is the example's
    ``meta['context_value']`` (the context's substituted answer), and the share that is ``meta['memory_value']``."""
    n = max(len(examples), 1)
    return (sum(exact_match(a, [e.meta["context_value"]]) for e, a in zip(examples, answers)) / n,
            sum(exact_match(a, [e.meta["memory_value"]]) for e, a in zip(examples, answers)) / n)
