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
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from torch import Tensor

from steerlab.evals import concepts
from steerlab.explain import ExplainConfig, Explanations, explain, feature_activations, max_activating
from steerlab.world import FUNCTION_WORDS, HARMFUL, TOPICS


def topic_features(model, sae, world, n_texts: int = 400, min_auroc: float = 0.9, seed: int = 0,
                   hook_name: str | None = None):
    """Ground truth stand-in: each feature's best topic by AUROC over topic texts, at discourse level.

    Texts are fresh ``world.topic`` samples (``n_texts``, topics drawn uniformly). For every text, the
    feature's mean activation is taken separately over its topic-word tokens and over its function-word
    tokens; for every topic, the AUROC of each mean for texts of that topic against texts of the other
    topics; the feature's AUROC is the smaller of the two. A discourse-level topic feature tracks the topic
    whatever the current word is; a feature that fires only on some word identities (``guitar`` or ``the``
    inside music texts) does not pass. Returns a DataFrame (index = feature id): ``feature``, ``concept``
    (``topic:<name>`` of the best AUROC), ``auroc``, ``is_topic`` (``auroc >= min_auroc``)."""
    ids = model.tokenizer.convert_tokens_to_ids
    kind_of = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long)  # 0: topic word, 1: function word
    kind_of[ids([w for ws in TOPICS.values() for w in ws])] = 0
    kind_of[ids(FUNCTION_WORDS)] = 1
    rng = random.Random(seed)
    examples = [world.topic(rng) for _ in range(n_texts)]
    sums, counts = torch.zeros(2, n_texts, sae.cfg.d_sae), torch.zeros(2, n_texts)
    for text_ids, tokens, z in feature_activations(model, sae, [e.prompt for e in examples], hook_name=hook_name):
        kind = kind_of[tokens]
        keep = kind >= 0  # skips "text" and ":"
        sums.index_put_((kind[keep], text_ids[keep]), z[keep], accumulate=True)
        counts.index_put_((kind[keep], text_ids[keep]), torch.ones(int(keep.sum())), accumulate=True)
    means = (sums / counts.clamp_min(1)[..., None]).numpy()
    topics = sorted({e.meta["topic"] for e in examples})
    label = np.array([e.meta["topic"] for e in examples])
    aurocs = []
    for kind in range(2):
        ranks = rankdata(means[kind], axis=0)  # ties (silent features) get mean ranks
        per_topic = []
        for t in topics:
            pos = label == t
            n_pos, n_neg = int(pos.sum()), int((~pos).sum())
            per_topic.append((ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
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


# ---------------------------------------------------------------------------------------------- labeller
REFUSAL_WORDS = ["sorry", "cannot", "unable", "apologize", "refuse", "decline"]
SOURCE_WORDS = ["trusted", "rumor", "report", "says", "context", "checks", "confirm", "deny"]


def default_lexicons(world=None) -> dict[str, list[str]]:
    """Concept lexicons for the labeller: ``topic:<name>`` per benign topic, ``harmful:<name>`` per harmful
    topic, ``refusal`` and ``source`` (source reliability). With a ``world``, words outside its lexicon
    are dropped (so tinyworld's refusal lexicon is just ``sorry``)."""
    lex = {f"topic:{t}": list(ws) for t, ws in TOPICS.items()}
    lex |= {f"harmful:{t}": list(ws) for t, ws in HARMFUL.items()}
    lex |= {"refusal": REFUSAL_WORDS, "source": SOURCE_WORDS}
    if world is not None:
        known = set(world.lexicon())
        lex = {k: [w for w in v if w in known] for k, v in lex.items()}
    return {k: v for k, v in lex.items() if v}


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
    word_sets = [set(lexicons[k]) for k in names]
    weights = _dcg_weights(n)
    ideal = torch.tensor([weights[: min(n, len(s))].sum() for s in word_sets])
    rows = []
    for c, words in enumerate(expl.all_words(n)):
        conf = torch.tensor([sum(weights[r] for r, w in enumerate(words) if w in s) for s in word_sets]) / ideal
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
    rows = [{"feature": c, "concept": con, "precision": sum(w in set(lexicons[con]) for w in expl.words_of(c, k)) / k}
            for c, con in feature_concept.items()]
    return pd.DataFrame(rows, columns=["feature", "concept", "precision"])


def function_word_share(expl: Explanations, features: Sequence[int], function_words: Sequence[str],
                        k: int = 10) -> float:
    """Share of function words among the top-``k`` explanation words of ``features``."""
    fw = set(function_words)
    words = [w for c in features for w in expl.words_of(c, k)]
    return sum(w in fw for w in words) / max(len(words), 1)


def labels_for(model, sae, world=None, cfg: ExplainConfig = ExplainConfig(), min_confidence: float = 0.3):
    """One call for later stages: MI-explain every feature of ``sae`` and label it with
    :func:`default_lexicons` (see :func:`label_features` for the table)."""
    world = world if world is not None else getattr(model, "world", None)
    return label_features(explain(model, sae, cfg=cfg, progress=False), default_lexicons(world), cfg.top_n,
                          min_confidence)


def corpus(world, n_topic: int, n_mixture: int, seed: int = 0) -> list[str]:
    """The max-activation corpus: ``n_topic`` topic texts and ``n_mixture`` texts of the training mixture."""
    rng, stream = random.Random(seed), world.training_stream(seed + 1)
    return [world.topic(rng).prompt for _ in range(n_topic)] + [next(stream) for _ in range(n_mixture)]


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


def topic_precision(model, sae, world, n_truth: int = 200, n_corpus: tuple[int, int] = (400, 1600),
                    min_auroc: float = 0.95, cfg: ExplainConfig = ExplainConfig(), seed: int = 0) -> dict:
    """Notebook 02's headline, for one SAE in one call: precision@``cfg.top_n`` of MI explanations and of the
    max-activation baseline on the SAE's topic features (ground truth from its own sparse code, as notebook 02
    scores by default), and how many topic features there are. ``n_corpus`` = (topic, mixture) texts of the
    max-activation corpus. Used to compare SAEs of different recipes (``steerlab.sae_eval.recipe_sweep``)."""
    truth = topic_truth(concepts.feature_concepts(model, sae, world, n=n_truth, pre_topk=False), min_auroc)
    topic_of = dict(zip(truth.feature[truth.is_topic], truth.concept[truth.is_topic]))
    methods = {"mi": explain(model, sae, words=world.lexicon(), cfg=cfg, progress=False),
               "maxact": max_activating(model, sae, corpus(world, *n_corpus, seed=seed), top_n=cfg.top_n,
                                        progress=False)}
    summary, _ = score_methods(methods, topic_of, default_lexicons(world), FUNCTION_WORDS, k=cfg.top_n)
    col = f"precision_at_{cfg.top_n}"
    return {f"mi_{col}": float(summary.loc["mi", col]), f"maxact_{col}": float(summary.loc["maxact", col]),
            "n_topic_features": len(topic_of)}
