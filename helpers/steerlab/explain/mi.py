"""Mutual-information explanations of SAE features (Wu et al., arXiv 2502.15576) and two baselines.

Every method returns an :class:`Explanations`: for each feature ``c`` of an SAE (``d_sae`` of them, index =
SAELens feature id), its ``top_n`` words, best first, with their scores.

The MI method
-------------
* ``s_c``: decoder row ``W_dec[c]`` through the model's final normalisation (:func:`feature_directions`).
* ``e_w``: mean unembedding column of the word's tokens, ``W_U[:, tokens(w)].mean(-1)``; the parameter
  ``embedding="embed"`` takes the mean input embedding row ``W_E[tokens(w)]`` instead (:func:`word_embeddings`).
* ``a(c, w) = <s_c, e_w>``; ``log p(w|c) = log_softmax_w(a / alpha)``; ``log p(c|w) = log_softmax_c(a / beta)``
  over *all* ``K = d_sae`` features.
* ``score(c, w) = p(w|c) * (log p(c|w) + log K)``: feature ``c``'s share of ``I(W; C)`` with a uniform prior
  ``p(c) = 1/K`` (``log p(c|w)/p(c)``). The ``log K`` term is the same for every pair, but it is needed
  for ranking: without it the score is never positive and words with ``p(w|c) -> 0`` would score highest.
  Words are ranked by the score in log space (``log p(w|c) + log PMI`` for positive PMI), so the order is
  exact even where ``p(w|c)`` underflows in float32.

Ranking as the released code does (``ExplainConfig(rank="released")``)
-----------------------------------------------------------------------
The authors' ``MI_explainer.py`` (JacksonWuxs/SteeringLLMs_with_MIExplanations, ``MIExplainer.explain``) sorts
each feature's words by the literal product ``p(w|c) * log p(c|w)`` in float32, with Python's
``sorted(zip(scores, words, ...), reverse=True)``: highest product first, ties broken by the word itself in
descending string order. That product is never positive, so its maximum is at words with ``p(w|c)`` near 0
(exactly 0 where the softmax underflows, and then the ties go reverse-alphabetically): the top words are those
the feature points to *least*. ``rank="released"`` reproduces that order and returns the literal product as the
score; with ``scale="raw"`` (the released code's units, as notebook 02 runs it) everything else is the same:
their feature directions are ``W_enc.T`` of a tied SAE
(``W_dec = W_enc.T``), i.e. the decoder rows, through the model's final norm, and their ``e_w`` are the mean
output-embedding rows of the word's tokens. One difference is left: the released code rounds the normed
directions to bfloat16; here they stay float32. steerlab's default ``rank="steerlab"`` adds ``log K`` (the
uniform prior ``p(c)``), which turns the product into feature ``c``'s share of ``I(W; C)`` and ranks the words
the feature points to most; notebook 02 scores both.

Units of the temperatures (``ExplainConfig(scale=...)``)
--------------------------------------------------------
``a(c, w)`` is in the model's own units, and those differ by an order of magnitude between models: its standard
deviation over all (feature, word) pairs is 2.1 for tinyworld's layer-2 SAE and 20 for Gemma 3 270M's layer-9 SAE
(Gemma's final RMSNorm weights reach the tens). At ``alpha = beta = 1`` in Gemma's units both softmaxes are
near one-hot: every content word belongs to the one feature that points to it most, every other feature has
positive PMI only with words that no feature points to, and 64 % of all explanation words were the function words
(``for that a is in of to the``, the same ten for most features). ``scale="std"`` (the default) divides ``a`` by
that standard deviation (:func:`score_std`, exact and cheap: ``E[a^2]`` is the sum of ``(S^T S) * (E^T E)``), so
the temperatures are in standard deviations of the score on every model; the share of function words on Gemma
falls to 0.9 %. ``scale="raw"`` keeps the model's units, as the released code does.

``log p(c|w)`` needs, for every word, a log-sum-exp over all features, so :func:`mi_explain` makes two
passes over feature chunks of ``chunk_size`` rows: pass 1 accumulates the per-word normaliser, pass 2 scores
the chunk and keeps its top ``top_n``. Peak memory is a few ``chunk_size x n_words`` float32 blocks,
whatever ``d_sae`` is.

Baselines
---------
* :func:`logit_lens`: top tokens of ``W_dec[c] @ W_U`` (raw decoder row, no normalisation).
* :func:`max_activating`: the distinct tokens at which the feature fires most over a corpus.

Judging explanations against the world and labelling features from them: :mod:`steerlab.explain_eval`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

EMBEDDINGS = ("unembed", "embed")
RANKS = ("steerlab", "released")  # word rankings: p(w|c)(log p(c|w) + log K), or the released literal product
SCALES = ("std", "raw")  # units of a(c, w) that alpha and beta divide: its standard deviation, or the model's own


@dataclass
class ExplainConfig:
    """Parameters of the MI explanations."""

    alpha: float = 1.0  # temperature of p(w|c) = softmax over words of a(c, w) / alpha
    beta: float = 1.0  # temperature of p(c|w) = softmax over features of a(c, w) / beta
    top_n: int = 10  # explanation words per feature
    embedding: str = "unembed"  # e_w from the unembedding ("unembed") or the input embedding ("embed")
    chunk_size: int = 2048  # features per chunk; memory grows as chunk_size x n_words
    rank: str = "steerlab"  # word ranking (RANKS): "steerlab" = p(w|c)(log p(c|w) + log K); "released" = the
    #                         released MI_explainer.py's literal p(w|c) log p(c|w), ties by word (module docstring)
    scale: str = "std"  # SCALES: "std" divides a(c, w) by its standard deviation over all (feature, word) pairs, so
    #                     alpha and beta mean the same on every model; "raw" keeps the model's units (module docstring)

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"alpha and beta are temperatures and must be > 0 (got {self.alpha}, {self.beta})")
        if self.top_n < 1 or self.chunk_size < 1:
            raise ValueError(f"top_n and chunk_size must be >= 1 (got {self.top_n}, {self.chunk_size})")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS} (got {self.embedding!r})")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS} (got {self.rank!r})")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES} (got {self.scale!r})")


@dataclass
class Explanations:
    """Top words per feature from one method.

    Attributes:
        method: ``"mi"``, ``"mi_released"`` (``rank="released"``), ``"logit_lens"`` or ``"max_act"``.
        words: the candidate words; ``indices`` point into it.
        indices: ``[d_sae, top_n]`` word indices per feature, best first (``-1`` = no word, e.g. a feature
            that never fired for ``max_act``).
        scores: ``[d_sae, top_n]`` the method's score of each word (MI score, logit, max activation).
    """

    method: str
    words: list[str]
    indices: Int[Tensor, "d_sae top_n"]
    scores: Float[Tensor, "d_sae top_n"]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def words_of(self, feature: int, n: int | None = None) -> list[str]:
        """The explanation words of ``feature``, best first (at most ``n``)."""
        row = self.indices[feature, :n].tolist()
        return [self.words[i] for i in row if i >= 0]

    def all_words(self, n: int | None = None) -> list[list[str]]:
        """Explanation words of every feature, in feature order."""
        return [self.words_of(c, n) for c in range(len(self))]


# ---------------------------------------------------------------------------------------------- vectors
def feature_directions(model, W_dec: Float[Tensor, "d_sae d_model"]) -> Float[Tensor, "d_sae d_model"]:
    """``s_c``: each decoder row through the model's final normalisation, as a direction.

    LayerNorm ``LN(x) = w * (x - mean x) / std(x) + b`` is not linear, but at a given position its scale
    ``1/std(x)`` is one positive number for the whole residual, so a feature's push on the logits points
    along ``w * centre(d)``. We apply the centring and ``w``, scale the centred row to unit standard
    deviation (what LN does to a residual made of this feature alone; it also removes the arbitrary norm of
    the decoder row, so alpha and beta mean the same for every feature), and leave out the bias ``b``: it
    is the same for every feature, adds the word-only term ``<b, e_w>`` to every ``a(c, w)`` and so acts
    as a word prior in ``p(w|c)``, the frequency bias the method is meant to remove. RMSNorm: no centring.
    Folded norms (``LNPre``/``RMSPre``, weights folded into ``W_U``) apply only the centring/scaling.
    """
    kind = getattr(model.cfg, "normalization_type", None)
    d = W_dec.float()
    if kind in ("LN", "LNPre"):
        d = d - d.mean(-1, keepdim=True)
    if kind is not None:
        d = d / d.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    w = getattr(getattr(model, "ln_final", None), "w", None)
    if kind in ("LN", "RMS") and w is not None:
        d = d * w.detach().float()
    return d


def word_tokens(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside running text (a leading space, no special tokens)."""
    return tokenizer.encode(" " + word, add_special_tokens=False)


def word_embeddings(model, words: Sequence[str], embedding: str = "unembed"
                    ) -> tuple[list[str], Float[Tensor, "n_words d_model"]]:
    """``(kept_words, E)``: ``E[i]`` is ``e_w`` of ``kept_words[i]``, the mean over the word's tokens of the
    unembedding columns (``embedding="unembed"``) or input embedding rows (``"embed"``). Words that the
    tokenizer maps to its unknown token, or to nothing, are dropped (logged)."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS} (got {embedding!r})")
    table = model.W_U.detach().T if embedding == "unembed" else model.W_E.detach()  # [d_vocab, d_model]
    unk = model.tokenizer.unk_token_id
    kept, rows, dropped = [], [], []
    for w in words:
        ids = word_tokens(model.tokenizer, w)
        if not ids or (unk is not None and unk in ids):
            dropped.append(w)
            continue
        kept.append(w)
        rows.append(table[ids].float().mean(0))
    if dropped:
        log.warning("%d words have no tokens of their own and are left out: %s", len(dropped), dropped[:10])
    if not kept:
        raise ValueError("none of the words could be tokenized: is this the model's word list?")
    return kept, torch.stack(rows)


def score_std(S: Float[Tensor, "d_sae d_model"], E: Float[Tensor, "n_words d_model"]) -> float:
    """The standard deviation of ``a(c, w) = <S[c], E[w]>`` over all (feature, word) pairs, without forming the
    ``d_sae x n_words`` table: the mean is ``<mean S, mean E>`` and the mean square is
    ``sum((S^T S) * (E^T E)) / (d_sae n_words)``."""
    S, E = S.double(), E.double()
    mean = S.mean(0) @ E.mean(0)
    mean_sq = ((S.T @ S) * (E.T @ E)).sum() / (S.shape[0] * E.shape[0])
    return float((mean_sq - mean ** 2).clamp_min(0).sqrt())


# ---------------------------------------------------------------------------------------------- MI method
def _rank_key(a: Tensor, lse_c: Tensor, cfg: ExplainConfig, log_k: float) -> tuple[Tensor, Tensor]:
    """(score, key) along the last axis (words) from ``a(c, w)`` (consumed: overwritten in place) and the
    per-word normaliser ``lse_c``: ``score = p(w|c) * pmi`` with ``pmi = log p(c|w) + log K``, and a key in
    the same order that does not underflow: ``log p(w|c) + log pmi`` for positive PMI and, below all of
    those, ``score`` shifted down for the rest. In-place steps keep the peak at ~4 blocks of ``a``'s size."""
    logp_wc = torch.log_softmax(a / cfg.alpha, dim=-1)
    pmi = a.div_(cfg.beta).sub_(lse_c).add_(log_k)
    score = logp_wc.exp().mul_(pmi)
    pos = pmi > 0
    key = pmi.clamp_min_(1e-30).log_().add_(logp_wc).masked_fill_(~pos, math.inf)  # overwrites pmi
    floor = key.min(-1, keepdim=True).values
    floor = torch.where(torch.isinf(floor), torch.zeros_like(floor), floor).clamp_max(0)
    shift = floor - 1 - score.abs().max(-1, keepdim=True).values
    torch.where(pos, key, logp_wc.copy_(score).add_(shift), out=key)
    return score, key


def _released_order(words: Sequence[str]) -> Tensor:
    """Word indices in descending string order (``sorted(..., reverse=True)``'s tie-break on the word)."""
    return torch.tensor(sorted(range(len(words)), key=lambda i: words[i], reverse=True), dtype=torch.long)


def _top_words(a: Tensor, lse_c: Tensor, cfg: ExplainConfig, log_k: float, top_n: int, by_word: Tensor
               ) -> tuple[Tensor, Tensor]:
    """``(indices, scores)`` ``[rows, top_n]`` of each row of ``a(c, w)`` ``[rows, n_words]`` (consumed), best first,
    by ``cfg.rank``. ``released``: ``score = softmax_w(a / alpha) * (a / beta - lse_c)`` in float32, as the released
    code computes it, sorted descending with ties in descending word order (``by_word``: :func:`_released_order`);
    ``+ 0.0`` makes an underflowed ``-0.0`` equal to ``0.0``, as Python's comparison treats them."""
    if cfg.rank == "released":
        score = torch.softmax(a / cfg.alpha, dim=-1) * (a / cfg.beta - lse_c) + 0.0
        top = torch.sort(score[:, by_word], dim=1, descending=True, stable=True).indices[:, :top_n]
        top = by_word[top]
        return top, score.gather(1, top)
    score, key = _rank_key(a, lse_c, cfg, log_k)
    top = key.topk(top_n, dim=1).indices
    return top, score.gather(1, top)


@torch.no_grad()
def mi_explain(S: Float[Tensor, "d_sae d_model"], E: Float[Tensor, "n_words d_model"], words: Sequence[str],
               cfg: ExplainConfig = ExplainConfig(), progress: bool = False) -> Explanations:
    """MI explanations of every feature direction in ``S`` (already normalised) over the words of ``E``,
    vectorised over chunks of ``cfg.chunk_size`` features (see the module docstring)."""
    if S.shape[1] != E.shape[1]:
        raise ValueError(f"S has d_model {S.shape[1]} but E has {E.shape[1]}: both must live in the residual")
    if len(words) != E.shape[0]:
        raise ValueError(f"{len(words)} words for {E.shape[0]} embeddings")
    S, E = S.float(), E.float()
    K, top_n = S.shape[0], min(cfg.top_n, E.shape[0])
    chunks = range(0, K, cfg.chunk_size)
    lse_c = torch.full((E.shape[0],), -math.inf)  # per word: logsumexp over features of a / beta
    for s in tqdm(chunks, desc="MI pass 1/2", disable=not progress):
        lse_c = torch.logaddexp(lse_c, torch.logsumexp(S[s: s + cfg.chunk_size] @ E.T / cfg.beta, dim=0))
    idx, val = torch.empty(K, top_n, dtype=torch.long), torch.empty(K, top_n)
    by_word = _released_order(words)
    for s in tqdm(chunks, desc="MI pass 2/2", disable=not progress):
        top, score = _top_words(S[s: s + cfg.chunk_size] @ E.T, lse_c, cfg, math.log(K), top_n, by_word)
        idx[s: s + len(top)], val[s: s + len(top)] = top, score
    return Explanations(_method_name(cfg), list(words), idx, val)


def _method_name(cfg: ExplainConfig) -> str:
    return "mi" if cfg.rank == "steerlab" else "mi_released"


@torch.no_grad()
def mi_explain_naive(S: Float[Tensor, "d_sae d_model"], E: Float[Tensor, "n_words d_model"],
                     words: Sequence[str], cfg: ExplainConfig = ExplainConfig(),
                     features: Sequence[int] | None = None) -> Explanations:
    """The same explanations with a plain per-feature loop (reference for tests and the benchmark).

    The normaliser over features is also accumulated one feature at a time. ``features`` limits pass 2
    to those rows (the returned tensors then have one row per listed feature)."""
    S, E = S.float(), E.float()
    K, top_n = S.shape[0], min(cfg.top_n, E.shape[0])
    lse_c = torch.full((E.shape[0],), -math.inf)
    for c in range(K):
        lse_c = torch.logaddexp(lse_c, E @ S[c] / cfg.beta)
    feats = list(range(K)) if features is None else list(features)
    idx, val = torch.empty(len(feats), top_n, dtype=torch.long), torch.empty(len(feats), top_n)
    by_word = _released_order(words)
    for r, c in enumerate(feats):
        top, score = _top_words((E @ S[c])[None], lse_c, cfg, math.log(K), top_n, by_word)
        idx[r], val[r] = top[0], score[0]
    return Explanations(_method_name(cfg), list(words), idx, val)


def explain(model, sae, words: Sequence[str] | None = None, cfg: ExplainConfig = ExplainConfig(),
            progress: bool = True) -> Explanations:
    """MI explanations of every feature of ``sae`` over ``words``, ``a(c, w)`` in ``cfg.scale`` units
    (default words: the shipped English list
    ``data/vocab/english_5000.txt``; pass a suite's words, ``steerlab.evals.explanations.vocabulary(suite)``,
    for tinyworld). A default list that the model's tokenizer mostly cannot spell (under half of it kept) is
    an error rather than explanations over the few words left."""
    given = words is not None
    words = list(words) if given else default_words(model)
    kept, E = word_embeddings(model, words, cfg.embedding)
    if not given and len(kept) < 0.5 * len(words):
        raise ValueError(f"the default explanation vocabulary (data/vocab/english_5000.txt) has only {len(kept)} "
                         f"of {len(words)} words this model's tokenizer can spell: pass words=, e.g. "
                         "steerlab.evals.explanations.vocabulary(suite) (tinyworld's lexicon)")
    S = feature_directions(model, sae.W_dec.detach())
    if cfg.scale == "std":
        S = S / max(score_std(S, E), 1e-12)
    return mi_explain(S, E, kept, cfg, progress)


def default_words(model=None) -> list[str]:
    """The fixed explanation vocabulary of a real model: the shipped 5,000 frequent English words
    (``data/vocab/english_5000.txt``, the paper's setting). A task suite may have its own
    (``steerlab.evals.explanations.vocabulary``); ``model`` is accepted for symmetry and not read."""
    from steerlab.models.paths import DATA_DIR

    return (DATA_DIR / "vocab" / "english_5000.txt").read_text().split()


# ---------------------------------------------------------------------------------------------- baselines
def token_strings(model) -> list[str]:
    """Every token of the model's vocabulary as the tokenizer decodes it alone (a subword keeps its leading
    space, ``" guitar"``; tinyworld's word-level tokens are the words), by id."""
    return model.tokenizer.batch_decode([[i] for i in range(model.cfg.d_vocab)])


@torch.no_grad()
def logit_lens(model, sae, top_n: int = 10, chunk_size: int | None = None) -> Explanations:
    """Top tokens of ``W_dec[c] @ W_U`` per feature (scores: the logit-lens values). ``chunk_size`` features per
    block (default: a block of about 50M floats, 4096 features at most: 190 for a 262k vocabulary)."""
    W_dec, W_U = sae.W_dec.detach().float(), model.W_U.detach().float()
    chunk_size = chunk_size or max(1, min(4096, 50_000_000 // W_U.shape[1]))
    idx, val = torch.empty(W_dec.shape[0], top_n, dtype=torch.long), torch.empty(W_dec.shape[0], top_n)
    for s in range(0, W_dec.shape[0], chunk_size):
        top = (W_dec[s: s + chunk_size] @ W_U).topk(top_n, dim=1)
        idx[s: s + chunk_size], val[s: s + chunk_size] = top.indices, top.values
    return Explanations("logit_lens", token_strings(model), idx, val)


def _hook_of(sae, hook_name: str | None) -> str:
    hook_name = hook_name or sae.cfg.metadata.hook_name
    if hook_name is None:
        raise ValueError("the SAE has no hook name in its metadata: pass hook_name='blocks.L.hook_resid_post'")
    return hook_name


@torch.no_grad()
def feature_activations(model, sae, texts: Sequence[str], batch_size: int = 64, hook_name: str | None = None,
                        progress: bool = False):
    """Yield ``(text_ids, tokens, z)`` per batch of ``texts``: for every token except ``<bos>`` and padding,
    the index of its text ``[n_tok]``, its token id ``[n_tok]`` and the SAE code ``sae.encode`` ``[n_tok, d_sae]``."""
    hook_name = _hook_of(sae, hook_name)
    layer = int(hook_name.split(".")[1])
    pad = model.tokenizer.pad_token_id
    for s in tqdm(range(0, len(texts), batch_size), desc="SAE activations", disable=not progress):
        tokens = model.to_tokens(list(texts[s: s + batch_size]))
        _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=layer + 1)
        keep = tokens != pad
        keep[:, 0] = False  # <bos>
        text_ids = (torch.arange(len(tokens)) + s)[:, None].expand_as(tokens)[keep]
        yield text_ids, tokens[keep], sae.encode(cache[hook_name][keep]).float()


@torch.no_grad()
def max_activating(model, sae, texts: Sequence[str], top_n: int = 10, batch_size: int = 64,
                   hook_name: str | None = None, progress: bool = True) -> Explanations:
    """The ``top_n`` distinct tokens at which each feature fires most over ``texts`` (``<bos>`` and padding
    excluded; scores: the max activations; indices: token ids). Keeps a ``[d_sae, n]`` float32 table of maxima
    over the ``n`` distinct tokens the corpus holds (not the whole vocabulary: Gemma has 262k tokens)."""
    col = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long)  # token id -> column of the table
    ids: list[int] = []  # column -> token id
    best = torch.zeros(sae.cfg.d_sae, 0)
    for _, tokens, z in feature_activations(model, sae, texts, batch_size, hook_name, progress):
        new = [int(t) for t in torch.unique(tokens) if col[t] < 0]
        if new:  # tokens seen for the first time get zero columns
            col[torch.tensor(new)] = torch.arange(len(ids), len(ids) + len(new))
            ids += new
            best = torch.cat([best, torch.zeros(sae.cfg.d_sae, len(new))], 1)
        best.scatter_reduce_(1, col[tokens].expand(sae.cfg.d_sae, -1), z.T, reduce="amax")
    if best.shape[1] < top_n:  # fewer distinct tokens than top_n: pad with zero columns (no word)
        best = torch.cat([best, torch.zeros(sae.cfg.d_sae, top_n - best.shape[1])], 1)
        ids += [0] * (top_n - len(ids))
    top = best.topk(top_n, dim=1)
    idx = torch.where(top.values > 0, torch.tensor(ids, dtype=torch.long)[top.indices], torch.full_like(top.indices, -1))
    return Explanations("max_act", token_strings(model), idx, top.values)


# ---------------------------------------------------------------------------------------------- notebook views
def side_by_side(expls: dict[str, Explanations], features: Sequence[int], n: int = 10, info=None):
    """A DataFrame with one row per feature and one column of explanation words per method (``info``: an
    optional DataFrame indexed by feature whose columns are added, e.g. the ground-truth concept)."""
    import pandas as pd

    df = pd.DataFrame({name: [" ".join(ex.words_of(c, n)) for c in features] for name, ex in expls.items()},
                      index=pd.Index(list(features), name="feature"))
    return df if info is None else info.loc[list(features)].join(df)

