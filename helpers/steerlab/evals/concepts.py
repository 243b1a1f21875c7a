"""Ground-truth concepts of the world and the SAE features that detect them.

Every concept is a labelled set of (prompt, token position) pairs drawn from the world's own samplers, so its
label is known exactly. A feature *detects* a concept when its activation ranks the positive positions above
the negative ones: AUROC = P(a_pos > a_neg) (+ 1/2 P(tie)), computed from average ranks. A concept counts as
detected when its best single feature reaches ``threshold`` (0.95).

The detector score of feature ``f`` is by default its pre-top-k code ``ReLU((x - b_dec) @ W_enc[:, f] + b_enc[f])``
(:func:`steerlab.sae.encode_pre_topk`, the quantity SPARE reads): the top-k cut only turns low scores into
ties at zero. ``pre_topk=False`` scores the SAE's own sparse code instead.

Concepts (``kind`` in brackets) and where they are read:

* ``topic:<t>`` (topic), one per topic: every position of a ``text :`` prompt once a topic word has appeared;
  positive when the text is about ``t`` (the model needs the topic to predict the next word).
* ``knowledge_source`` (latent): the knowledge-conflict prompts (``report`` source) at the ``.`` that closes
  their ``checks``, the first position where all five checks have been read and the latent is determined;
  positive when the world says the model uses the context (at least 3 checks confirm), negative when it uses
  memory. At the last position, where SPARE reads, the residual carries the looked-up answer value instead
  (as for attributes below); :func:`source_by_position` scores every position from the checks to the end.
* ``refusal`` (behaviour): the last position of requests (harmful, jailbroken and benign); positive when the
  request is refused.
* ``harm:<h>`` (harmful topic), one per harmful topic: the request words of harmful requests (plain and
  jailbroken); positive when the word belongs to harmful topic ``h`` (negatives: benign words and the other
  harmful topics).
* ``attribute:<a>`` (attribute), one per attribute type: the attribute word of the question part of
  closed-book, open-book and multiple-choice prompts (the word before the last ``?``); positive when the
  question asks for attribute ``a``. (At the last position the residual carries the looked-up *value*, one
  feature per value, so no single feature covers a whole attribute type there.)

Positions count ``<bos>`` as 0, so word ``i`` of a prompt is position ``i + 1``.

On a suite other than tinyworld (any object without ``.world``, e.g. the real suite of Gemma) the concepts are
the suite's topics (:func:`suite_concepts`): ``topic:<t>`` at every token of the suite's topic texts from
position ``TOPIC_START`` on (``<bos>`` and the first tokens, before the topic shows, left out); positive when
the text is about ``t``. Functions that take ``world`` accept a tinyworld ``World``, a tinyworld suite or any
other suite.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from steerlab.core.activations import encode_pre_topk
from steerlab.sae.codes import stop_layer
from steerlab.sae.io import check_fits
from steerlab.world import ATTRIBUTES, HARMFUL, TOPICS, World

DETECTED_AUROC = 0.95
TOPIC_START = 4  # first token position of a real topic text read as the topic concept (<bos> is 0)


@dataclass
class Concept:
    """A labelled set of positions: ``items[i] = (prompt, position)`` with label ``labels[i]``."""

    name: str  # e.g. "topic:music"
    kind: str  # topic | latent | behaviour | harmful topic | attribute
    items: list = field(default_factory=list)  # (prompt, position) pairs
    labels: list = field(default_factory=list)  # bools, one per item

    def add(self, prompt: str, position: int, label: bool) -> None:
        self.items.append((prompt, position))
        self.labels.append(bool(label))


def world_concepts(world: World, n: int = 200, seed: int = 0) -> list[Concept]:
    """The world's concepts (see the module docstring), ``n`` prompts per source set."""
    rng = random.Random(seed)
    concepts: list[Concept] = []
    texts = [world.topic(rng, t) for t in TOPICS for _ in range(max(n // len(TOPICS), 4))]
    for t in TOPICS:
        c = Concept(f"topic:{t}", "topic")
        for ex in texts:
            topic_words = set(TOPICS[ex.meta["topic"]])
            first = next((i for i, w in enumerate(ex.meta["words"]) if w in topic_words), None)
            for i in range(first if first is not None else len(ex.meta["words"]), len(ex.meta["words"])):
                c.add(ex.prompt, i + 3, ex.meta["topic"] == t)  # "text :" is words 0-1, <bos> is position 0
        concepts.append(c)
    c = Concept("knowledge_source", "latent")
    for ex in world.eval_sets(n, seed=seed + 1)["conflict_mixed"]:
        c.add(ex.prompt, checks_end(ex.prompt), ex.meta["uses"] == "context")
    concepts.append(c)
    requests = ([world.request(rng, True, False) for _ in range(n // 2)]
                + [world.request(rng, True, True) for _ in range(n // 2)]
                + [world.request(rng, False) for _ in range(n // 2)])
    c = Concept("refusal", "behaviour")
    for ex in requests:
        c.add(ex.prompt, _last(ex.prompt), ex.meta["refuse"])
    concepts.append(c)
    for h in HARMFUL:
        c = Concept(f"harm:{h}", "harmful topic")
        for ex in requests:
            if ex.meta["harmful"]:
                words = ex.prompt.split()
                start = words.index("to") + 1  # "... request : how to w w w ? response :"
                for i in range(start, words.index("?")):
                    c.add(ex.prompt, i + 1, words[i] in HARMFUL[h])
        concepts.append(c)
    questions = ([world.closed_book(rng) for _ in range(n)] + [world.open_book(rng) for _ in range(n)]
                 + [world.mcqa(rng) for _ in range(n)])
    for a in ATTRIBUTES:
        c = Concept(f"attribute:{a}", "attribute")
        for ex in questions:
            words = ex.prompt.split()
            c.add(ex.prompt, len(words) - words[::-1].index("?") - 1, ex.meta["attribute"] == a)
        concepts.append(c)
    return concepts


def suite_concepts(suite, tokenizer, n: int = 200, seed: int = 0) -> list[Concept]:
    """``topic:<t>`` concepts of a suite without a world (see the module docstring): ``n`` topic texts, every
    token position from ``TOPIC_START`` to the text's last token (positions count ``<bos>`` as 0)."""
    texts = suite.topic_texts(n, seed)
    if not texts:
        raise ValueError(f"the {getattr(suite, 'name', 'given')} suite provides no topic texts: no concepts")
    lengths = [len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]) for ex in texts]
    out = []
    for t in sorted(suite.topics()):
        c = Concept(f"topic:{t}", "topic")
        for ex, n_tok in zip(texts, lengths):
            for pos in range(TOPIC_START, n_tok + 1):
                c.add(ex.prompt, pos, ex.meta["topic"] == t)
        if any(c.labels) and not all(c.labels):
            out.append(c)
    return out


def concepts_of(model, source, n: int = 200) -> list[Concept]:
    """The concepts of ``source``: a tinyworld ``World`` or suite (:func:`world_concepts`), or any other
    suite (:func:`suite_concepts`)."""
    if isinstance(source, World):
        return world_concepts(source, n)
    if getattr(source, "world", None) is not None:
        return world_concepts(source.world, n)
    return suite_concepts(source, model.tokenizer, n)


def _last(prompt: str) -> int:
    return len(prompt.split())  # <bos> + words: the last word sits at position len(words)


def checks_end(prompt: str) -> int:
    """Position of the ``.`` that closes a conflict prompt's ``checks : ...`` list (``<bos>`` is position 0)."""
    words = prompt.split()
    if "checks" not in words:
        raise ValueError(f"not a knowledge-conflict prompt with checks: {prompt!r}")
    return words.index(".", words.index("checks")) + 1


@torch.no_grad()
def feature_activations(model, sae, items: list, pre_topk: bool = False, batch_size: int = 256) -> torch.Tensor:
    """SAE codes ``[len(items), d_sae]`` at each (prompt, position); prompts are run once each, batched by length."""
    hook = sae.cfg.metadata.hook_name
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, (prompt, _) in enumerate(items):
        by_prompt[prompt].append(i)
    by_len: dict[int, list[str]] = defaultdict(list)
    for prompt in by_prompt:  # same token count in a batch: no padding (any tokenizer)
        by_len[int(model.to_tokens(prompt).shape[1])].append(prompt)
    out = torch.zeros(len(items), sae.cfg.d_sae)
    for prompts in by_len.values():
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s: s + batch_size]
            _, cache = model.run_with_cache(model.to_tokens(chunk), names_filter=hook, stop_at_layer=stop_layer(hook))
            acts = cache[hook]
            for row, prompt in enumerate(chunk):
                idx = by_prompt[prompt]
                x = acts[row, [items[i][1] for i in idx]]
                out[idx] = encode_pre_topk(sae, x) if pre_topk else sae.encode(x)
    return out


def auroc_per_feature(acts: torch.Tensor, labels, ranks: np.ndarray | None = None) -> np.ndarray:
    """AUROC of every feature (column of ``acts [n, d_sae]``) as a detector of ``labels`` (ties count 1/2).
    ``ranks``: ``rankdata(acts, axis=0)`` when already computed (they do not depend on the labels)."""
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"a concept needs positive and negative examples (got {n_pos} and {n_neg})")
    if ranks is None:
        ranks = rankdata(acts.numpy(), axis=0)  # average ranks: ties count 1/2
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def concept_activations(model, sae, concepts: list, pre_topk: bool = False):
    """``(group, acts)`` for each run of consecutive concepts that share their ``(prompt, position)`` items (a real
    model's topic concepts: the same topic texts, labelled per topic), ``acts`` as :func:`feature_activations` gives
    them: one harvest per group instead of one model pass per concept."""
    for _, group in itertools.groupby(concepts, key=lambda c: c.items):
        group = list(group)
        yield group, feature_activations(model, sae, group[0].items, pre_topk)


def concept_aurocs(model, sae, world, n: int = 200, pre_topk: bool = True) -> pd.DataFrame:
    """AUROC matrix: one row per concept (index = concept name), one column per feature (``world``: a World or
    a suite, see :func:`concepts_of`)."""
    check_fits(model, sae)
    rows = {}
    for group, acts in concept_activations(model, sae, concepts_of(model, world, n), pre_topk):
        ranks = rankdata(acts.numpy(), axis=0)  # they depend on the activations only: once per harvest
        rows.update({c.name: auroc_per_feature(acts, c.labels, ranks=ranks) for c in group})
    return pd.DataFrame.from_dict(rows, orient="index")


def concept_table(model, sae, world, n: int = 200, aurocs: pd.DataFrame | None = None,
                  threshold: float = DETECTED_AUROC) -> pd.DataFrame:
    """Best single feature per concept: columns kind, feature, auroc, runner_up_auroc, n_pos, n_neg, detected."""
    aurocs = concept_aurocs(model, sae, world, n) if aurocs is None else aurocs
    concepts = {c.name: c for c in concepts_of(model, world, n)}
    rows = []
    for name, row in aurocs.iterrows():
        order = np.argsort(-row.to_numpy())
        c = concepts[name]
        rows.append({"concept": name, "kind": c.kind, "feature": int(row.index[order[0]]),
                     "auroc": float(row.iloc[order[0]]), "runner_up_auroc": float(row.iloc[order[1]]),
                     "n_pos": sum(c.labels), "n_neg": len(c.labels) - sum(c.labels)})
    table = pd.DataFrame(rows).set_index("concept")
    table["detected"] = table["auroc"] >= threshold
    return table


def feature_concepts(model=None, sae=None, world=None, n: int = 200,
                     aurocs: pd.DataFrame | None = None, pre_topk: bool = True) -> dict[int, tuple[str, float]]:
    """``{feature: (best concept, its AUROC)}`` for every feature (pass ``aurocs`` to reuse a computed matrix).

    ``pre_topk`` chooses the score, as in :func:`concept_aurocs`. To say what a feature *is*, the SAE's own
    sparse code (``pre_topk=False``) is the stricter truth: a feature whose pre-top-k score ranks finance texts
    high but which never makes the top-k cut there is not a finance feature (it carries no finance signal in
    the reconstruction the model sees). The pre-top-k score answers a different question, whether *some*
    feature could detect a concept, which is what the detector table asks."""
    if aurocs is None:
        if model is None or sae is None or world is None:
            raise ValueError("feature_concepts needs model, sae and world, or a precomputed aurocs matrix")
        aurocs = concept_aurocs(model, sae, world, n, pre_topk=pre_topk)
    best = aurocs.idxmax(axis=0)
    return {int(f): (str(best[f]), float(aurocs.at[best[f], f])) for f in aurocs.columns}


def attribute_by_format(model, sae, world: World, n: int = 200) -> pd.DataFrame:
    """Best single-feature AUROC for each attribute type within each question format (rows: attribute,
    columns: closed_book, open_book, mcqa, all formats). Shows whether the SAE splits a concept by format."""
    check_fits(model, sae)
    rng = random.Random(1)
    formats = {"closed_book": [world.closed_book(rng) for _ in range(n)],
               "open_book": [world.open_book(rng) for _ in range(n)], "mcqa": [world.mcqa(rng) for _ in range(n)]}
    formats["all formats"] = [ex for exs in formats.values() for ex in exs]
    table = {}
    for name, exs in formats.items():
        items = []
        for ex in exs:
            words = ex.prompt.split()
            items.append((ex.prompt, len(words) - words[::-1].index("?") - 1))
        acts = feature_activations(model, sae, items, pre_topk=True)
        table[name] = {a: float(auroc_per_feature(acts, [ex.meta["attribute"] == a for ex in exs]).max())
                       for a in ATTRIBUTES}
    return pd.DataFrame(table)


def source_by_position(model, sae, world: World, n: int = 200, seed: int = 1) -> pd.DataFrame:
    """Where the knowledge-source latent is readable: for every position from ``checks`` to the end of the
    conflict prompts (all share one layout), the best single feature's AUROC for "the model uses the context"
    (pre-top-k score). Columns position, word, best_feature, auroc; the row ``is_concept`` is the position
    :func:`world_concepts` reads."""
    check_fits(model, sae)
    exs = world.eval_sets(n, seed=seed)["conflict_mixed"]
    words = exs[0].prompt.split()
    if any(len(e.prompt.split()) != len(words) for e in exs):
        raise ValueError("conflict prompts of different lengths: source_by_position needs one layout")
    labels = [e.meta["uses"] == "context" for e in exs]
    positions = range(words.index("checks") + 1, len(words) + 1)
    # one pass per prompt for every position: feature_activations groups the items by prompt
    acts = feature_activations(model, sae, [(e.prompt, p) for p in positions for e in exs], pre_topk=True)
    rows = []
    for k, pos in enumerate(positions):
        au = auroc_per_feature(acts[k * len(exs): (k + 1) * len(exs)], labels)
        rows.append({"position": pos, "word": words[pos - 1], "best_feature": int(au.argmax()),
                     "auroc": float(au.max()), "is_concept": pos == checks_end(exs[0].prompt)})
    return pd.DataFrame(rows)


def detected_fraction(table: pd.DataFrame) -> float:
    """Share of concepts whose best single feature reaches the detection threshold."""
    return float(table["detected"].mean())


# ------------------------------------------------------------------------------------------------ k-sparse probing

PROBE_KS = (1, 2, 5)


def _balanced(idx: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``idx`` with the larger class subsampled to the smaller one's size (SAEBench's balanced binary sets)."""
    pos, neg = idx[y[idx]], idx[~y[idx]]
    n = min(len(pos), len(neg))
    return np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])


def sparse_probe(acts: torch.Tensor, labels, groups, ks=PROBE_KS, test_frac: float = 0.3, seed: int = 0
                 ) -> dict[int, float]:
    """k-sparse probing as SAEBench does it: on a balanced train split, the ``k`` latents with the largest
    ``|mean(pos) - mean(neg)|`` are chosen, a logistic regression is fit on those ``k`` activations alone, and its
    accuracy on a balanced held-out split is returned, ``{k: accuracy}``. The split is by ``groups`` (the prompt
    of each position), so no prompt has positions on both sides; chance is 0.5.

    SAEBench (``sparse_probing``, ``get_top_k_mean_diff_mask``) pools each text's activations into one vector;
    here every item is one (prompt, position), the unit the world labels."""
    from sklearn.linear_model import LogisticRegression

    X, y = acts.float().numpy(), np.asarray(labels, dtype=bool)
    rng = np.random.default_rng(seed)
    has_pos: dict = {}
    for gr, lab in zip(groups, y):
        has_pos[gr] = has_pos.get(gr, False) or bool(lab)
    held = set()
    for side in (True, False):  # stratified: prompts with a positive position, and the others, split alike
        names = [gr for gr, p in has_pos.items() if p == side]
        if len(names) > 1:
            held |= set(rng.choice(names, max(1, int(round(test_frac * len(names)))), replace=False).tolist())
    test_mask = np.array([g in held for g in groups])
    tr, te = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    if min(y[tr].sum(), (~y[tr]).sum(), y[te].sum(), (~y[te]).sum()) == 0:
        raise ValueError("sparse_probe needs positives and negatives on both sides of the split "
                         f"(train {int(y[tr].sum())}/{int((~y[tr]).sum())}, test {int(y[te].sum())}/{int((~y[te]).sum())})")
    tr, te = _balanced(tr, y, rng), _balanced(te, y, rng)
    diff = np.abs(X[tr][y[tr]].mean(0) - X[tr][~y[tr]].mean(0))
    order = np.argsort(-diff, kind="stable")
    out = {}
    for k in ks:
        cols = order[:k]
        clf = LogisticRegression(max_iter=1000).fit(X[tr][:, cols], y[tr])
        out[int(k)] = float(clf.score(X[te][:, cols], y[te]))
    return out


def sparse_probe_table(model, sae, world, n: int = 200, ks=PROBE_KS, seed: int = 0) -> pd.DataFrame:
    """Held-out k-sparse probe accuracy (:func:`sparse_probe`, the SAE's own sparse code) for every concept of
    ``world`` (see :func:`concepts_of`): one row per concept, columns ``kind`` and ``k1``, ``k2``, ``k5`` ...
    A concept with fewer than two prompts holding a positive, or two without, cannot be split by prompt: its row is
    NaN (left out of a column's mean), as on a small real-model smoke run."""
    check_fits(model, sae)
    concepts = concepts_of(model, world, n)
    rows = {c.name: {"concept": c.name, "kind": c.kind, **{f"k{k}": float("nan") for k in ks}} for c in concepts}
    splittable = [c for c in concepts if _splits_by_prompt(c)]
    for group, acts in concept_activations(model, sae, splittable, pre_topk=False):
        for c in group:
            accs = sparse_probe(acts, c.labels, [p for p, _ in c.items], ks, seed=seed)
            rows[c.name].update({f"k{k}": a for k, a in accs.items()})
    return pd.DataFrame(list(rows.values())).set_index("concept")


def _splits_by_prompt(c) -> bool:
    """At least two prompts with a positive position and two without: the probe's held-out split is by prompt."""
    pos = {p for (p, _), y in zip(c.items, c.labels) if y}
    return len(pos) >= 2 and len({p for p, _ in c.items} - pos) >= 2
    return pd.DataFrame(rows).set_index("concept")
