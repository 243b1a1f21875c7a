"""The task interface: what a notebook asks of a task suite, on any model and any tokenizer.

An :class:`Example` is one prompt with its gold answer(s) and documented metadata; :meth:`Example.score` judges a
completion on decoded text, normalised as SQuAD does (lower case, punctuation and articles dropped), so it works
with a word-level tokenizer (tinyworld) and with a subword one (Gemma) alike.

A :class:`TaskSuite` provides what each notebook needs; a suite that lacks a task returns ``None`` (or an empty
list) for it and the notebook skips that section with a note. Method packages (``core``, ``sae``, ``explain``,
``steer``, ``control``, ``circuits``) never import this module: they duck-type on ``Example``'s fields
(``prompt``, ``answer``, ``meta``, ``max_new_tokens``, ``score``); ``steerlab.evals`` is where a method meets a
suite.

``Example.meta`` fields, by task family (a suite may add its own):

=================  =====================================================================================
``context_value``  knowledge conflicts: the answer the context states (SPARE's "sub", EM_C)
``memory_value``   knowledge conflicts: the answer the model holds in memory (SPARE's "org", EM_M)
``relation``       facts and conflicts: the relation (``capital``, ``currency``, ...)
``subject``        facts and conflicts: the entity asked about
``harmful``        requests: whether the request is harmful (bool)
``wrapped``        requests: whether a jailbreak wrapper surrounds it (bool)
``topic``          topic texts: the topic's name
``result``         arithmetic / reasoning: the number the answer must state
``letter``         multiple choice: the gold option letter
=================  =====================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from steerlab.core.text import answer_span, exact_match, normalize_answer  # noqa: F401 (re-exported)

@dataclass
class Example:
    """One task instance.

    Attributes:
        task: the task family (``closed_book``, ``open_book``, ``conflict``, ``mcqa``, ``reasoning``, ``topic``,
            ``request``, ...).
        prompt: the text the model is given (the tokenizer adds BOS in front).
        answer: the gold answer as text; empty for texts without one (topic texts).
        meta: documented ground truth of this instance (see the module docstring).
        answers: further accepted gold answers (aliases).
        max_new_tokens: how many tokens :func:`steerlab.core.run.answer` generates; 0 reads the next token only.
    """

    task: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict)
    answers: tuple[str, ...] = ()
    max_new_tokens: int = 0

    @property
    def golds(self) -> tuple[str, ...]:
        """Every accepted answer: ``answer`` first, then ``answers``."""
        return (self.answer, *self.answers)

    def score(self, completion: str) -> bool:
        """Whether ``completion`` (the text generated after the prompt) answers this example correctly."""
        return exact_match(completion, self.golds)


def matches(completion: str, value: str) -> bool:
    """Whether a completion's answer span is ``value`` (normalised): EM against one value, as SPARE's EM_C / EM_M."""
    return exact_match(completion, [value])


class TaskSuite:
    """What the notebooks ask of a model's tasks. Subclasses override what they provide; the defaults say
    "not provided" (``None``), and a notebook skips that section with a markdown note.

    Every method takes ``n`` (how many examples) and ``seed`` (which ones) and is deterministic in them.
    """

    name: str = "suite"
    #: words that carry no topic (for the function-word share of explanations)
    function_words: tuple[str, ...] = ("the", "a", "of", "and", "in", "with", "for", "on", "it", "that", "this", "by")

    def texts(self, n: int, seed: int = 0) -> list[str]:
        """General text for SAE training and max-activation corpora."""
        raise NotImplementedError(f"{type(self).__name__} provides no text corpus")

    def topics(self) -> dict[str, list[str]] | None:
        """``{topic: vocabulary words}``: the concepts explanations are scored against."""
        return None

    def topic_texts(self, n: int, seed: int = 0) -> list[Example] | None:
        """Texts about one topic each (``meta['topic']``)."""
        return None

    def facts(self, n: int, seed: int = 0) -> list[Example] | None:
        """Closed-book factual questions (answer: the object)."""
        return None

    def conflicts(self, n: int, seed: int = 0, split: str = "eval") -> list[Example] | None:
        """Knowledge conflicts (``meta['context_value']``, ``meta['memory_value']``); ``split`` is ``fit``,
        ``select`` or ``eval`` (disjoint)."""
        return None

    def requests(self, n: int, seed: int = 0, harmful: bool | None = None,
                 wrapped: bool | None = None) -> list[Example] | None:
        """Harmful / benign requests and their jailbreak wrappers; ``None`` for a model that never refuses."""
        return None

    def mcqa(self, n: int, seed: int = 0) -> list[Example] | None:
        """Multiple-choice questions with a verifiable answer (``meta['letter']``)."""
        return None

    def reasoning(self, n: int, seed: int = 0) -> list[Example] | None:
        """Multi-token tasks with a verifiable answer (``meta['result']``), e.g. arithmetic."""
        return None

    def data_stats(self, tokenizer=None) -> dict[str, float]:
        """Figures about the suite's data for notebook 00's metrics (e.g. how many facts, corpus tokens counted
        with ``tokenizer``); empty when the suite has none to report."""
        return {}

    def provides(self, what: str) -> bool:
        """Whether the suite provides ``what`` (a method name above)."""
        try:
            out = getattr(self, what)(2) if what != "topics" else self.topics()
        except NotImplementedError:
            return False
        return bool(out)
