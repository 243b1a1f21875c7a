"""Topic steering (notebook 03, section 6): amplification and calibration of a topic's explained SAE features
(Wu et al., arXiv 2502.15576), against adding a mean-difference vector and against prompting with the topic.

Measured the way AxBench (Wu et al. 2025, "AxBench") does it in spirit, with the suite's vocabularies as the judge
instead of a language model:

* **topic rate**: the share of steered generations from neutral prompts that are on the target topic: at least one
  word of its vocabulary (:func:`on_topic`), and no other topic's vocabulary more often;
* **fluency**: the mean ``log p(token | prompt, earlier tokens)`` of the generated tokens under the *unsteered*
  model (:func:`steerlab.core.run.continuation_logprob`). A steered model that repeats topic words it would
  never write scores low.

Each method has its own strength axis. Amplification ``X' = X + alpha ReLU(X S) S^T`` is multiplicative (it
scales what the input already holds of S, so on a prompt where S is silent it does nothing); calibration
``X' = X - ReLU(X S) S^T + beta mean(S)`` and the mean-difference vector ``X' = X + c v`` add a fixed vector, and
their strengths are given as that vector's norm relative to the hook's mean residual norm, so both push equally
hard. Every edit applies at every position, generated ones included. Each method's strength is chosen on the
selection prompts (:func:`choose`: the highest topic rate whose fluency stays within ``max_fluency_drop`` of the
unsteered generations'), then scored on the evaluation prompts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from steerlab.core import hooks
from steerlab.core import run as evaluate
from steerlab.core.hooks import hook_name_for
from steerlab.sae.train import harvest
from steerlab.steer import features as feat

#: neutral openings for a suite of English text (tinyworld's neutral prompts are ``text :`` and function words)
ENGLISH_OPENINGS = ["I think that", "The", "Yesterday", "In my opinion,", "One thing I noticed is that",
                    "She said that", "Here is a short story:", "The best part of the day was", "It is important to",
                    "My friend told me about", "Last week,", "There was a", "We decided to", "The main reason is",
                    "People often", "When I was young,", "This morning", "He wrote a letter about",
                    "The problem with", "Everyone agreed that", "After lunch we", "It was the first time",
                    "According to the note,", "Nobody expected"]


@dataclass
class TopicSteeringConfig:
    """Strength sweeps and measurement settings of :func:`topic_sweep`."""

    alphas: Sequence[float] = (4.0, 16.0, 64.0)  # amplification alpha (multiplies the features' own activation)
    rel_strengths: Sequence[float] = (0.25, 0.5, 1.0)  # calibration / mean difference: added norm / mean residual norm
    n_features: int = 3  # most confident features labelled with the topic (S)
    max_new_tokens: int = 12  # generated tokens per prompt
    max_fluency_drop: float = 1.0  # nats per token below the unsteered generations' fluency a chosen strength may go
    methods: Sequence[str] = field(default=("amplify", "calibrate", "meandiff"))

    def __post_init__(self) -> None:
        if not self.alphas or not self.rel_strengths:
            raise ValueError("TopicSteeringConfig needs at least one alpha and one relative strength")
        bad = set(self.methods) - {"amplify", "calibrate", "meandiff"}
        if bad:
            raise ValueError(f"unknown topic-steering methods {sorted(bad)}; use amplify, calibrate, meandiff")
        if self.n_features < 1 or self.max_new_tokens < 1:
            raise ValueError("n_features and max_new_tokens must be positive")


def neutral_prompts(suite, n: int, seed: int = 0) -> list[str]:
    """``n`` prompts that name no topic: tinyworld's ``text :`` followed by two function words, or English
    openings (:data:`ENGLISH_OPENINGS`, cycled) for any other suite."""
    rng = random.Random(seed)
    world = getattr(suite, "world", None)
    if world is not None:
        fw = list(suite.function_words)
        return [f"text : {rng.choice(fw)} {rng.choice(fw)}" for _ in range(n)]
    pool = rng.sample(ENGLISH_OPENINGS, len(ENGLISH_OPENINGS))
    return [pool[i % len(pool)] for i in range(n)]


def topic_prompt(suite, topic: str, prompt: str, seed: int = 0) -> str:
    """The prompting baseline: ``prompt`` with the topic asked for in front. English: ``"The following text is
    about <topic>. "``; tinyworld, whose texts never name their topic, starts the text with two of its words."""
    if getattr(suite, "world", None) is not None:
        words = random.Random(f"{seed}:{topic}:{prompt}").sample(list(suite.topics()[topic]), 2)
        return prompt.replace("text :", f"text : {words[0]} {words[1]}", 1)
    return f"The following text is about {topic}. {prompt}"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def on_topic(text: str, topic: str, vocabularies: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``text`` holds at least one word of ``topic``'s vocabulary and no other topic's words more often."""
    words = _words(text)
    counts = {t: sum(w in {v.lower() for v in vocab} for w in words) for t, vocab in vocabularies.items()}
    return counts[topic] >= 1 and counts[topic] >= max(counts.values())


def _residuals(model, hook_name: str, texts: Sequence[str]) -> Tensor:
    """The residual at ``hook_name`` (a ``blocks.L.hook_resid_post``) at every token of ``texts`` but BOS and
    padding, ``[n_tokens, d_model]``."""
    parts = hook_name.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or hook_name != hook_name_for(int(parts[1])):
        raise ValueError(f"topic steering reads a residual stream hook blocks.L.hook_resid_post (got {hook_name!r})")
    return harvest(model, evaluate.to_tokens(model, list(texts)), (int(parts[1]),))[int(parts[1])]


def topic_vector(model, hook_name: str, texts_on: Sequence[str], texts_off: Sequence[str]) -> Tensor:
    """Mean residual at ``hook_name`` over the tokens of ``texts_on`` minus that over ``texts_off`` (BOS left out)."""
    return _residuals(model, hook_name, texts_on).mean(0) - _residuals(model, hook_name, texts_off).mean(0)


def topic_vectors(acts: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`topic_vector` for every topic at once from one harvest per topic (``acts``: topic -> residuals
    ``[n_tokens, d_model]``): each topic's mean minus the mean over the other topics' tokens, pooled."""
    sums, counts = {t: a.sum(0) for t, a in acts.items()}, {t: a.shape[0] for t, a in acts.items()}
    total, n = sum(sums.values()), sum(counts.values())
    return {t: sums[t] / counts[t] - (total - sums[t]) / (n - counts[t]) for t in acts if n > counts[t]}


def mean_residual_norm(model, hook_name: str, texts: Sequence[str]) -> float:
    """Mean L2 norm of the residual at ``hook_name`` over the tokens of ``texts`` (BOS left out)."""
    return float(_residuals(model, hook_name, texts).norm(dim=-1).mean())


def _edit(method: str, hook_name: str, sae, S: Sequence[int], v: Tensor, strength: float, norm: float
          ) -> list[hooks.Hook]:
    if method == "amplify":
        return feat.amplify(hook_name, sae, S, strength)
    if method == "calibrate":
        s_bar = feat.decoder_rows(sae, S).mean(0)
        return feat.calibrate(hook_name, sae, S, strength * norm / float(s_bar.norm()))
    return hooks.add_vector(hook_name, v / v.norm(), strength * norm)


def measure(model, prompts: Sequence[str], topic: str, vocabularies: Mapping[str, Sequence[str]],
            fwd_hooks=(), max_new_tokens: int = 12, generate_from: Sequence[str] | None = None) -> dict:
    """Greedy generations from ``prompts`` under ``fwd_hooks``: ``topic_rate``, ``fluency`` (mean over
    generations; an empty generation counts as not on topic and is left out of fluency) and the texts.
    ``generate_from`` (prompting): generate from these prompts instead, and score fluency after ``prompts``."""
    ids = evaluate.complete_ids(model, list(generate_from or prompts), max_new_tokens, fwd_hooks)
    texts = [evaluate.decode(model, row) for row in ids]
    flu = evaluate.continuation_logprob(model, prompts, ids)
    return {"topic_rate": float(np.mean([on_topic(t, topic, vocabularies) for t in texts])),
            "fluency": float(np.nanmean(flu.numpy())) if bool(torch.isfinite(flu).any()) else float("nan"),
            "texts": texts}


def topic_sweep(model, sae, hook_name: str, suite, topic_features: Mapping[str, Sequence[int]],
                select: Sequence[str], evaluate_on: Sequence[str], cfg: TopicSteeringConfig = TopicSteeringConfig(),
                n_texts: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every topic of ``topic_features`` (topic -> its labelled features, most confident first; topics without
    features are skipped) x method x strength on the ``select`` prompts, then each method at its chosen strength,
    the unsteered model and prompting on the ``evaluate_on`` prompts.

    Returns ``(sweep, table)``: the sweep rows (``topic``, ``method``, ``strength``, ``topic_rate``, ``fluency``)
    and the evaluation rows (``topic``, ``method``, ``strength``, ``topic_rate``, ``fluency``, ``example``)."""
    vocab = suite.topics()
    texts = {t: [e.prompt for e in suite.topic_texts(4 * n_texts, seed) if e.meta.get("topic") == t][:n_texts]
             for t in vocab}
    vectors = topic_vectors({t: _residuals(model, hook_name, ts) for t, ts in texts.items() if ts})
    norm = mean_residual_norm(model, hook_name, [x for ts in texts.values() for x in ts][: 2 * n_texts])
    sweep_rows, rows = [], []
    base_sel = {}
    for topic, feats in topic_features.items():
        S = list(feats)[: cfg.n_features]
        if not S or topic not in vectors:
            continue
        v = vectors[topic]
        base_sel[topic] = measure(model, select, topic, vocab, (), cfg.max_new_tokens)
        chosen = {}
        for method in cfg.methods:
            grid = cfg.alphas if method == "amplify" else cfg.rel_strengths
            cands = []
            for s in grid:
                m = measure(model, select, topic, vocab, _edit(method, hook_name, sae, S, v, s, norm), cfg.max_new_tokens)
                sweep_rows.append({"topic": topic, "method": method, "strength": s, "topic_rate": m["topic_rate"],
                                   "fluency": m["fluency"]})
                cands.append((s, m))
            chosen[method] = choose(cands, base_sel[topic]["fluency"], cfg.max_fluency_drop)
        evals = {"none": (0.0, ())} | {"prompting": (float("nan"), None)}
        evals |= {m: (s, _edit(m, hook_name, sae, S, v, s, norm)) for m, s in chosen.items()}
        for method, (s, fwd) in evals.items():
            asked = [topic_prompt(suite, topic, p, seed) for p in evaluate_on] if fwd is None else None
            # prompting: the topic asked for in the prompt, fluency scored after the neutral prompt
            m = measure(model, evaluate_on, topic, vocab, fwd or (), cfg.max_new_tokens, generate_from=asked)
            rows.append({"topic": topic, "method": method, "strength": s, "topic_rate": m["topic_rate"],
                         "fluency": m["fluency"], "example": m["texts"][0] if m["texts"] else ""})
    return pd.DataFrame(sweep_rows), pd.DataFrame(rows)


def choose(candidates: Sequence[tuple[float, dict]], base_fluency: float, max_drop: float) -> float:
    """The strength of the highest topic rate among ``candidates`` (``(strength, measure result)``, in sweep
    order) whose fluency is at least ``base_fluency - max_drop``; ties go to the earlier (weaker) strength. When
    none keeps its fluency, the first (weakest) strength."""
    ok = [(s, m) for s, m in candidates if np.isfinite(m["fluency"]) and m["fluency"] >= base_fluency - max_drop]
    if not ok:
        return candidates[0][0]
    best = max(m["topic_rate"] for _, m in ok)
    return next(s for s, m in ok if m["topic_rate"] == best)


def summary_metrics(table: pd.DataFrame) -> dict:
    """``<method>_topic_rate`` and ``<method>_fluency`` (means over topics, at each method's chosen strength) for
    ``none``, ``prompting``, ``amplify``, ``calibrate`` and ``meandiff``, and ``n_topics_steered``."""
    if table.empty:
        return {"n_topics_steered": 0}
    g = table.groupby("method")[["topic_rate", "fluency"]].mean()
    out = {f"{m}_{k}": float(g.loc[m, k]) for m in g.index for k in ("topic_rate", "fluency")}
    return out | {"n_topics_steered": int(table.topic.nunique())}
