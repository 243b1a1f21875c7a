"""Explanations against the world, and feature labels from explanation words (notebook 02, read by 03).

The MI explanations and their baselines are made in :mod:`steerlab.explain`; this module judges them and uses
them (as :mod:`steerlab.sae_eval` does for :mod:`steerlab.sae`):

* Ground truth: :func:`topic_truth` reads the SAE stage's detector table (``steerlab.concepts``);
  :func:`topic_features` is a stricter, discourse-level view computed here.
* :func:`precision_at_k`, :func:`function_word_share`, :func:`score_methods`: explanations against the world;
  :func:`corpus` is the max-activation baseline's corpus.
* :func:`topic_precision`: the MI-against-max-activation precision of one SAE in one call, to compare SAEs.
* :func:`label_features` labels every feature from its explanation words alone, given concept lexicons
  (:func:`default_lexicons`); :func:`features_with_label` picks a feature set S for steering;
  :func:`labels_for` does explain + label in one call; :func:`write_labels` / :func:`read_labels` store the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import Tensor

from steerlab.evals import concepts
from steerlab.explain import (ExplainConfig, Explanations, explain, feature_activations, logit_lens,
                              max_activating)
from steerlab.models.paths import DATA_DIR

ENGLISH_WORDS = DATA_DIR / "vocab" / "english_5000.txt"  # the explanation vocabulary of a real model (Wu et al.)


def as_suite(source):
    """A task suite from a suite or a tinyworld ``World`` (older callers pass the world)."""
    if hasattr(source, "topics") and hasattr(source, "provides"):
        return source
    from steerlab.tasks.tinyworld import TinyworldSuite

    return TinyworldSuite(source)


def vocabulary(suite) -> list[str]:
    """The candidate explanation words: tinyworld's lexicon, else the shipped 5,000 frequent English words."""
    world = getattr(suite, "world", None)
    return world.lexicon() if world is not None else ENGLISH_WORDS.read_text().split()


def topic_features(model, sae, suite, n_texts: int = 400, min_auroc: float = 0.9, seed: int = 0,
                   hook_name: str | None = None):
    """Ground truth stand-in: each feature's best topic by AUROC over topic texts, at discourse level.

    Texts are ``suite.topic_texts(n_texts, seed)``. For every text, the feature's mean activation is taken
    separately over its topic-word tokens and over its function-word tokens (a token's kind is read from its
    decoded text, stripped and lower-cased: a word of ``suite.topics()`` or of ``suite.function_words``; other
    tokens and ``<bos>`` are left out); for every topic, the AUROC of each mean for texts of that topic against
    texts of the other topics; the feature's AUROC is the smaller of the two. A discourse-level topic feature
    tracks the topic whatever the current word is; a feature that fires only on some word identities does not
    pass. Returns a DataFrame (index = feature id): ``feature``, ``concept`` (``topic:<name>`` of the best
    AUROC), ``auroc``, ``is_topic`` (``auroc >= min_auroc``)."""
    suite = as_suite(suite)
    topic_words = {w.lower() for ws in suite.topics().values() for w in ws}
    function_words = {w.lower() for w in suite.function_words}
    kinds: dict[int, int] = {}

    def kind(token: int) -> int:  # 0: topic word, 1: function word, -1: neither
        if token not in kinds:
            w = model.tokenizer.decode([token]).strip().lower()
            kinds[token] = 0 if w in topic_words else 1 if w in function_words else -1
        return kinds[token]

    examples = suite.topic_texts(n_texts, seed)
    n_texts = len(examples)
    sums, counts = torch.zeros(2, n_texts, sae.cfg.d_sae), torch.zeros(2, n_texts)
    for text_ids, tokens, z in feature_activations(model, sae, [e.prompt for e in examples], hook_name=hook_name):
        k = torch.tensor([kind(int(t)) for t in tokens], dtype=torch.long)
        keep = k >= 0
        sums.index_put_((k[keep], text_ids[keep]), z[keep], accumulate=True)
        counts.index_put_((k[keep], text_ids[keep]), torch.ones(int(keep.sum())), accumulate=True)
    means = (sums / counts.clamp_min(1)[..., None]).numpy()
    topics = sorted({e.meta["topic"] for e in examples})
    label = np.array([e.meta["topic"] for e in examples])
    aurocs = []
    for kd in range(2):
        ranks = rankdata(means[kd], axis=0)  # ties (silent features) get mean ranks
        per_topic = []
        for t in topics:
            pos = label == t
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
            per_topic.append((ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))
        aurocs.append(np.stack(per_topic))
    auroc_t = np.minimum(*aurocs)  # [topic, d_sae]
    best = auroc_t.argmax(0)
    auroc = auroc_t.max(0)
    return pd.DataFrame({"feature": range(sae.cfg.d_sae), "concept": [f"topic:{topics[i]}" for i in best],
                         "auroc": auroc, "is_topic": auroc >= min_auroc}).set_index("feature", drop=False)


def topic_truth(feature_concepts: dict[int, tuple[str, float]], min_auroc: float = 0.95):
    """The topic features of the SAE stage's detector table (``steerlab.concepts.feature_concepts``: feature ->
    (best concept, AUROC)): a DataFrame like :func:`topic_features` (index = feature id) whose ``is_topic``
    marks features whose best concept is a ``topic:*`` concept with AUROC >= ``min_auroc``."""
    rows = [{"feature": f, "concept": c, "auroc": a, "is_topic": c.startswith("topic:") and a >= min_auroc}
            for f, (c, a) in sorted(feature_concepts.items())]
    return pd.DataFrame(rows).set_index("feature", drop=False)


def best_per_topic(truth: pd.DataFrame) -> dict[int, str]:
    """``{feature: "topic:<t>"}``, one feature per topic: of the features whose best concept is that topic (a
    :func:`topic_truth` table), the one with the highest AUROC, whatever its value. A truth that needs no threshold
    and holds every topic once, for an SAE where few features pass ``min_auroc`` (Gemma 3 270M: one); SAEBench's
    k = 1 probe picks one latent per concept the same way (its ranking is by mean difference)."""
    topic = truth[truth.concept.str.startswith("topic:")]
    if topic.empty:
        return {}
    best = topic.groupby("concept").auroc.idxmax()
    return {int(f): str(c) for c, f in best.items()}


# ---------------------------------------------------------------------------------------------- labeller
REFUSAL_WORDS = ["sorry", "cannot", "unable", "apologize", "refuse", "decline"]
SOURCE_WORDS = ["trusted", "rumor", "report", "says", "context", "checks", "confirm", "deny"]


def default_lexicons(suite=None, words: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Concept lexicons for the labeller: ``topic:<name>`` per topic of the suite, ``harmful:<name>`` per harmful
    topic (tinyworld), ``refusal`` and ``source`` (source reliability). ``suite``: a task suite or a tinyworld
    ``World`` (``None``: tinyworld's lexicons). Words outside the explanation vocabulary (``words``, default:
    :func:`vocabulary` of the suite; tinyworld: its lexicon, so its refusal lexicon is just ``sorry``) are dropped."""
    from steerlab.world import HARMFUL, TOPICS

    s = as_suite(suite) if suite is not None else None
    topics = s.topics() if s is not None else TOPICS
    lex = {f"topic:{t}": list(ws) for t, ws in (topics or {}).items()}
    if s is None or getattr(s, "world", None) is not None:
        lex |= {f"harmful:{t}": list(ws) for t, ws in HARMFUL.items()}
    lex |= {"refusal": REFUSAL_WORDS, "source": SOURCE_WORDS}
    if s is not None:
        known = {w.lower() for w in (words if words is not None else vocabulary(s))}
        lex = {k: [w for w in v if w.lower() in known] for k, v in lex.items()}
    return {k: v for k, v in lex.items() if v}


def _norm(word: str) -> str:
    """A decoded token or word as lexicons hold it: no surrounding spaces, lower case (``" Guitar"`` -> ``guitar``)."""
    return word.strip().lower()


def _dcg_weights(n: int) -> Tensor:
    return 1.0 / torch.log2(torch.arange(n, dtype=torch.float) + 2.0)


def label_features(expl: Explanations, lexicons: dict[str, Sequence[str]], n: int = 10,
                   min_confidence: float = 0.3):
    """Label each feature from its explanation words alone.

    For each concept, ``confidence = DCG / ideal DCG`` of the feature's top-``n`` words that lie in the
    concept's lexicon (rank weight ``1/log2(rank + 2)``; the ideal puts ``min(n, |lexicon|)`` lexicon words
    first), so a feature explained by ``sorry`` alone is a confident refusal feature and one with a single
    topic word at rank 8 is not. The label is the concept of highest confidence, or ``"none"`` below
    ``min_confidence``.

    Returns a DataFrame with one row per feature (index = feature id): ``feature``, ``label``,
    ``confidence``, ``words`` (the explanation, space-separated).
    """
    names = list(lexicons)
    word_sets = [{_norm(w) for w in lexicons[k]} for k in names]
    weights = _dcg_weights(n)
    ideal = torch.tensor([weights[: min(n, len(s))].sum() for s in word_sets])
    rows = []
    for c, words in enumerate(expl.all_words(n)):
        words_n = [_norm(w) for w in words]
        conf = torch.tensor([sum(weights[r] for r, w in enumerate(words_n) if w in s) for s in word_sets]) / ideal
        best = int(conf.argmax())
        label = names[best] if conf[best] >= min_confidence else "none"
        rows.append({"feature": c, "label": label, "confidence": float(conf[best]), "words": " ".join(words)})
    return pd.DataFrame(rows).set_index("feature", drop=False)


def features_with_label(labels, label: str, min_confidence: float = 0.0) -> list[int]:
    """Feature ids whose label is ``label`` or, for a group name such as ``"harmful"`` or ``"topic"``, starts
    with ``label + ":"``; most confident first. ``labels``: a :func:`label_features` table or a
    :func:`read_labels` result."""
    t = labels[(labels["label"] == label) | labels["label"].str.startswith(label + ":")]
    t = t[t["confidence"] >= min_confidence].sort_values("confidence", ascending=False)
    return [int(f) for f in t["feature"]]


def write_labels(path, labels, **meta) -> None:
    """Write a label table as JSON: ``{"meta": {...}, "labels": [{feature, label, confidence, words}]}``."""
    Path(path).write_text(json.dumps({"meta": meta, "labels": labels.to_dict("records")}, indent=1))


def read_labels(path):
    """Read a label table written by :func:`write_labels` (a DataFrame indexed by feature id)."""
    rows = json.loads(Path(path).read_text())["labels"]
    return pd.DataFrame(rows).set_index("feature", drop=False)


# ---------------------------------------------------------------------------------------------- scoring
def precision_at_k(expl: Explanations, feature_concept: dict[int, str], lexicons: dict[str, Sequence[str]],
                   k: int = 10):
    """Per feature with a ground-truth concept: the share of its top-``k`` words in that concept's lexicon
    (missing words count as misses). DataFrame columns ``feature``, ``concept``, ``precision``."""
    lex = {con: {_norm(w) for w in ws} for con, ws in lexicons.items()}
    rows = [{"feature": c, "concept": con, "precision": sum(_norm(w) in lex[con] for w in expl.words_of(c, k)) / k}
            for c, con in feature_concept.items()]
    return pd.DataFrame(rows, columns=["feature", "concept", "precision"])


def function_word_share(expl: Explanations, features: Sequence[int], function_words: Sequence[str],
                        k: int = 10) -> float:
    """Share of function words among the top-``k`` explanation words of ``features`` (NaN for no features)."""
    fw = {_norm(w) for w in function_words}
    words = [_norm(w) for c in features for w in expl.words_of(c, k)]
    return sum(w in fw for w in words) / len(words) if words else float("nan")  # no features: undefined, not 0


def labels_for(model, sae, suite, cfg: ExplainConfig = ExplainConfig(), min_confidence: float = 0.3):
    """One call for later stages: MI-explain every feature of ``sae`` over the suite's :func:`vocabulary` and
    label it with :func:`default_lexicons` (see :func:`label_features` for the table)."""
    suite = as_suite(suite)
    words = vocabulary(suite)
    return label_features(explain(model, sae, words=words, cfg=cfg, progress=False),
                          default_lexicons(suite, words), cfg.top_n, min_confidence)


def selected_features_table(fits, feature_labels: dict) -> pd.DataFrame:
    """SPARE's selected features (``fits``: ``steerlab.steer.spare.SpareFit`` per layer) with their MI and their
    explanation words (``feature_labels``: hook name -> :func:`label_features` table), highest MI first."""
    rows = [{"layer": f.hook_name, "feature": c, "set": name, "mi": f.mi[c],
             "words": feature_labels[f.hook_name].loc[c, "words"]}
            for f in fits for name, feats in (("Z_C", f.context_features), ("Z_M", f.memory_features)) for c in feats]
    cols = ["layer", "feature", "set", "mi", "words"]
    return pd.DataFrame(rows, columns=cols).sort_values("mi", ascending=False)


def corpus(suite, n_topic: int, n_mixture: int, seed: int = 0) -> list[str]:
    """The max-activation corpus: ``n_topic`` topic texts and ``n_mixture`` general texts of the suite
    (tinyworld: its training mixture). ``suite``: a task suite or a tinyworld ``World``."""
    suite = as_suite(suite)
    return [e.prompt for e in suite.topic_texts(n_topic, seed)] + list(suite.texts(n_mixture, seed + 1))


def score_methods(expls: dict[str, Explanations], feature_concept: dict[int, str],
                  lexicons: dict[str, Sequence[str]], function_words: Sequence[str], k: int = 10):
    """``(summary, per_concept)`` DataFrames: per method, mean precision@k over the features of
    ``feature_concept`` and the function-word share of their explanations; and precision per concept
    (rows: concepts, columns: methods)."""
    summary, per = {}, {}
    for name, ex in expls.items():
        prec = precision_at_k(ex, feature_concept, lexicons, k)
        summary[name] = {f"precision_at_{k}": prec["precision"].mean(), "n_features": len(prec),
                         "function_word_share": function_word_share(ex, list(feature_concept), function_words, k)}
        per[name] = prec.groupby("concept")["precision"].mean()
    return pd.DataFrame(summary).T, pd.DataFrame(per)


def topic_precision(model, sae, suite, n_truth: int = 200, n_corpus: tuple[int, int] = (400, 1600),
                    min_auroc: float = 0.95, cfg: ExplainConfig = ExplainConfig(), seed: int = 0) -> dict:
    """Notebook 02's headline, for one SAE in one call: precision@``cfg.top_n`` of MI explanations and of the
    max-activation baseline on the SAE's topic features (ground truth from its own sparse code, as notebook 02
    scores by default), and how many topic features there are. ``n_corpus`` = (topic, mixture) texts of the
    max-activation corpus; ``suite``: a task suite or a tinyworld ``World``. Used to compare SAEs of different
    recipes (``steerlab.evals.sae_quality.recipe_sweep``)."""
    suite = as_suite(suite)
    truth = topic_truth(concepts.feature_concepts(model, sae, suite, n=n_truth, pre_topk=False), min_auroc)
    topic_of = dict(zip(truth.feature[truth.is_topic], truth.concept[truth.is_topic]))
    words = vocabulary(suite)
    methods = {"mi": explain(model, sae, words=words, cfg=cfg, progress=False),
               "maxact": max_activating(model, sae, corpus(suite, *n_corpus, seed=seed), top_n=cfg.top_n,
                                        progress=False)}
    summary, _ = score_methods(methods, topic_of, default_lexicons(suite, words), suite.function_words, k=cfg.top_n)
    col = f"precision_at_{cfg.top_n}"
    return {f"mi_{col}": float(summary.loc["mi", col]), f"maxact_{col}": float(summary.loc["maxact", col]),
            "n_topic_features": len(topic_of)}


# ---------------------------------------------------------------------------------------------- notebook 02
@dataclass
class GroundTruth:
    """Which features are topic features, by two truths (notebook 02, section 4).

    Attributes:
        truth: the headline table (:func:`topic_truth` of the ``truth_code`` activations; index = feature id),
            with a ``discourse`` column: topic feature here AND at discourse level (:func:`topic_features`) for
            the same topic.
        other: the same table from the other code (``pre_topk`` when the headline is ``sparse``, and back).
        truth_code / other_code: ``sparse`` (the SAE's own top-k code) or ``pre_topk`` (encoder before the cut).
        feature_topic / feature_topic_discourse / feature_topic_other: ``{feature: "topic:<t>"}`` of each truth.
    """

    truth: pd.DataFrame
    other: pd.DataFrame
    truth_code: str
    other_code: str
    feature_topic: dict
    feature_topic_discourse: dict
    feature_topic_other: dict


TRUTH_CODES = ("sparse", "pre_topk")


def ground_truth(model, sae, suite, n_texts: int = 200, min_auroc: float = 0.95, truth_code: str = "sparse",
                 seed: int = 0) -> GroundTruth:
    """Topic features of ``sae`` on the suite's topic texts, by both codes and at discourse level (none, with empty
    tables, for a suite without topics). Every
    activation excludes ``<bos>`` (``steerlab.evals.concepts`` reads positions after it;
    ``steerlab.explain.feature_activations`` drops it)."""
    if truth_code not in TRUTH_CODES:
        raise ValueError(f"truth_code must be one of {TRUTH_CODES} (got {truth_code!r})")
    suite = as_suite(suite)
    other_code = "pre_topk" if truth_code == "sparse" else "sparse"
    if not suite.provides("topics") or not suite.provides("topic_texts"):  # nothing to score against
        empty = pd.DataFrame(columns=["feature", "concept", "auroc", "is_topic", "discourse"])
        return GroundTruth(empty, empty.copy(), truth_code, other_code, {}, {}, {})
    tables = {code: topic_truth(concepts.feature_concepts(model, sae, suite, n=n_texts, pre_topk=code == "pre_topk"),
                                min_auroc) for code in TRUTH_CODES}
    truth, other = tables[truth_code], tables[other_code]
    discourse = topic_features(model, sae, suite, n_texts=n_texts, min_auroc=min_auroc, seed=seed + 7)
    truth["discourse"] = truth.is_topic & discourse.is_topic & (discourse.concept == truth.concept)
    pick = lambda t, col: dict(zip(t.feature[t[col]], t.concept[t[col]]))
    return GroundTruth(truth, other, truth_code, other_code, pick(truth, "is_topic"), pick(truth, "discourse"),
                       pick(other, "is_topic"))


def baselines(model, sae, suite, n_topic: int, n_mixture: int, top_n: int = 10, seed: int = 0) -> dict:
    """``{"maxact": ..., "logitlens": ...}``: max-activating tokens over :func:`corpus` (``<bos>`` excluded) and the
    logit lens of the decoder rows, tokens decoded as the tokenizer writes them."""
    texts = corpus(suite, n_topic, n_mixture, seed)
    return {"maxact": max_activating(model, sae, texts, top_n=top_n, progress=False),
            "logitlens": logit_lens(model, sae, top_n=top_n)}


def temperature_sweep(model, sae, words: Sequence[str], feature_topic: dict, lexicons: dict, function_words,
                      alphas: Sequence[float], betas: Sequence[float], cfg: ExplainConfig = ExplainConfig()
                      ) -> pd.DataFrame:
    """MI precision@10 and function-word share on the topic features for every (alpha, beta)."""
    from dataclasses import replace

    rows = []
    for a in alphas:
        for b in betas:
            e = explain(model, sae, words=words, cfg=replace(cfg, alpha=a, beta=b), progress=False)
            s, _ = score_methods({"mi": e}, feature_topic, lexicons, function_words, k=10)
            rows.append({"alpha": a, "beta": b, "precision_at_10": s.loc["mi", "precision_at_10"],
                         "function_word_share": s.loc["mi", "function_word_share"]})
    return pd.DataFrame(rows)


LABEL_GROUPS = ("topic", "harmful", "refusal", "source", "none")


def label_counts(labels) -> pd.Series:
    """Features per label group (``topic``, ``harmful``, ``refusal``, ``source``, ``none``)."""
    return labels.label.str.split(":").str[0].value_counts().reindex(list(LABEL_GROUPS), fill_value=0)


def summary_metrics(summaries: dict, gt: GroundTruth, sweep: pd.DataFrame, sae, layer: int, explain_seconds: float,
                    n_words: int, counts: pd.Series) -> dict:
    """Notebook 02's headline metrics. ``summaries``: :func:`score_methods` summaries under the headline truth
    (``"truth"``), at discourse level (``"discourse"``), under the other code (``"other"``) and, optionally, over
    the best feature of each topic (``"best_per_topic"``, :func:`best_per_topic`)."""
    s, d, o = summaries["truth"], summaries["discourse"], summaries["other"]
    val = lambda df, m, k: float(df.loc[m, k]) if m in df.index else float("nan")
    keys = ("precision_at_10", "function_word_share")
    m = {f"{name}_{k}": val(s, name, k) for name in s.index for k in keys}
    m |= {f"{name}_{k}_discourse": val(d, name, k) for name in s.index for k in keys}
    m |= {f"{name}_{k}_{gt.other_code}_truth": val(o, name, k) for name in s.index for k in keys}
    if "best_per_topic" in summaries:
        b = summaries["best_per_topic"]
        m |= {f"{name}_{k}_best_per_topic": val(b, name, k) for name in s.index for k in keys}
        m["n_topic_features_best_per_topic"] = len(best_per_topic(gt.truth))
    m |= {"mi_minus_maxact_precision": m["mi_precision_at_10"] - m["maxact_precision_at_10"],
          "n_topic_features": len(gt.feature_topic), f"n_topic_features_{gt.other_code}_truth": len(gt.feature_topic_other),
          "truth_code": gt.truth_code, "mi_precision_at_10_sweep_max": float(sweep.precision_at_10.max()),
          "n_topic_features_discourse": len(gt.feature_topic_discourse), "d_sae": int(sae.cfg.d_sae),
          "layer": int(layer), "explain_seconds": float(explain_seconds), "n_words": int(n_words),
          **{f"n_labelled_{k}": int(v) for k, v in counts.items()}}
    return m
