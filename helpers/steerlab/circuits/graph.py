"""Attribution graphs over residual-stream SAE features (circuit-tracer style) and their pruning.

A graph explains one prompt's target logit(s) with the *local replacement model*: at every SAE layer ``L``
the residual stream ``blocks.L.hook_resid_post`` is written as ``sum_s a_s W_dec[s] + b_dec + err_L``, the
SAE error ``err_L`` held fixed. The weight of the edge from source ``s`` to target ``t`` is
``a_s * d pre_t / d a_s`` (gradient times activation), where ``pre_t`` is the target feature's encoder
pre-activation ``(x - b_dec) W_enc[:, t] + b_enc[t]`` and, for a logit node, the (demeaned) logit. Because
each SAE layer's reconstruction carries the whole residual stream, edges run from one SAE layer to the next
one only (embeddings -> first SAE layer -> ... -> last SAE layer -> logits).

**The edges are a first-order approximation, not circuit-tracer's exact edges** (:data:`ATTRIBUTION`).
circuit-tracer replaces every MLP by a transcoder and stops the gradient at the MLP output, with attention
patterns and normalisation scales frozen: every edge is then a linear effect and the graph is exact. Here
the SAEs read the residual stream, so between two SAE layers the gradient flows *through* the MLPs (and the
attention value paths): attention patterns and normalisation scales are frozen at the prompt's values, but
each MLP is linearised at the prompt (its Jacobian at the prompt's activations). An edge is the derivative
times the activation, exact for small changes only; ablations move the logit by about the predicted amount
only as far as the MLPs behave linearly (``steerlab.evals.circuits.faithfulness`` measures how far). There
are no edges that skip an SAE layer, and an error node stands for everything the SAE of its layer misses of
the whole residual stream (attention and MLP alike), not only an MLP's reconstruction error.

Edges are computed one *batch of target rows* per backward pass: the segment of blocks between two SAE
layers is run on ``B`` copies of the source residual stream, row ``b`` back-propagates target ``b`` only;
a batch runs only the causal prefix up to its targets' positions (later positions cannot affect them).

Pruning follows circuit-tracer (``prune_graph``): influence is the logit-weighted sum over all paths of the
row-normalised absolute adjacency matrix; :func:`cumulative_influence` is the share circuit-tracer writes as a
node's ``influence`` in its JSON. The scores of :func:`graph_scores` use circuit-tracer's formulas
(``compute_graph_scores``) but, on this graph, measure something else, hence their names
(``residual_replacement``, ``residual_completeness``; see :class:`GraphScores`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from steerlab.core.activations import rescales_by_decoder_norm

log = logging.getLogger(__name__)

ATTRIBUTION = ("residual-SAE, first-order: edges are gradient x activation between adjacent SAE layers "
               "(residual-stream SAEs at blocks.L.hook_resid_post), attention patterns and normalisation scales "
               "frozen, gradients through the MLPs (linearised at the prompt); not circuit-tracer's exact "
               "transcoder edges")  # written into the JSON metadata (``steerlab.circuits.io.to_json``)


@dataclass
class GraphConfig:
    """How a graph is built and pruned."""

    batch_size: int = 512  # target rows per backward pass (at most)
    max_batch_tokens: int = 16384  # ... and at most this many rows x positions per pass (bounds the memory)
    max_n_logits: int = 5  # targets when none are given: top logits ...
    desired_logit_prob: float = 0.95  # ... until their cumulative probability reaches this
    demean_logits: bool = True  # target = logit - mean logit (circuit-tracer), else the raw logit
    node_threshold: float = 0.8  # keep the nodes holding this share of cumulative influence
    edge_threshold: float = 0.98  # keep the edges holding this share of cumulative edge influence
    max_feature_nodes: int = 0  # at most this many feature nodes per SAE layer (largest activation x decoder norm
    # first; the rest are folded into their (layer, position) error node, so the graph stays exact); 0: every one
    exclude_bos: bool = False  # True: no feature nodes at position 0 (BOS: Gemma's residual norm there is ~13x
    # the others', so its SAE code is meaningless); its SAE reconstruction is folded into the BOS error node

    def __post_init__(self) -> None:
        if min(self.batch_size, self.max_n_logits, self.max_batch_tokens) < 1:
            raise ValueError("GraphConfig.batch_size, max_batch_tokens and max_n_logits must be at least 1")
        if self.max_feature_nodes < 0:
            raise ValueError(f"GraphConfig.max_feature_nodes must be >= 0 (0 = no cap; got {self.max_feature_nodes})")
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"GraphConfig.{name} must lie in (0, 1] (got {getattr(self, name)})")


@dataclass
class AttributionGraph:
    """One prompt's attribution graph.

    Node order of ``adjacency_matrix`` (rows = targets, columns = sources; ``A[t, s]`` is the direct
    effect of node ``s`` on node ``t``), with ``F = len(active_features)``, ``L = len(layers)``, ``P = n_pos``:

    * ``[0, F)``: active SAE features, sorted by (layer, position, feature id); ``active_features[i]`` is
      ``(layer, position, feature id)`` and ``activation_values[i]`` its activation;
    * ``[F, F + L*P)``: SAE error nodes, layer-major: error of ``layers[j]`` at position ``p`` is
      ``F + j*P + p``;
    * ``[F + L*P, F + L*P + P)``: token embedding nodes (token + positional embedding), one per position;
    * the last ``len(logit_tokens)`` rows: the target logit nodes (at the last position).

    Only feature and logit rows have incoming edges, and only from the SAE layer (or the embeddings) just below:
    the edges are a first-order approximation through the MLPs (see the module docstring, :data:`ATTRIBUTION`).
    """

    prompt: str
    input_tokens: list[str]  # token strings, <bos> first
    input_ids: list[int]
    layers: list[int]  # SAE layers (residual stream after these blocks)
    active_features: Int[Tensor, "n_feat 3"]
    activation_values: Float[Tensor, "n_feat"]
    feature_acts_by_pos: Float[Tensor, "n_feat n_pos"]  # each active feature's activation at every position
    adjacency_matrix: Float[Tensor, "n_nodes n_nodes"]
    logit_tokens: list[int]
    logit_probabilities: Float[Tensor, "n_logits"]
    logit_weights_given: bool = False  # True when targets were given (weights uniform) rather than top logits
    n_backward: int = 0  # backward passes used to build it
    meta: dict = field(default_factory=dict)
    d_sae: dict[int, int] = field(default_factory=dict)  # {layer: SAE width}: sets the JSON's feature-id offset

    @property
    def n_pos(self) -> int:
        return len(self.input_ids)

    @property
    def n_features(self) -> int:
        return int(self.active_features.shape[0])

    def error_index(self, layer_idx: int, pos: int) -> int:
        return self.n_features + layer_idx * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + len(self.layers) * self.n_pos + pos

    @property
    def logit_offset(self) -> int:
        return self.n_features + (len(self.layers) + 1) * self.n_pos

    def logit_weights(self) -> Float[Tensor, "n_nodes"]:
        """Weight of each node as a target: the logit probabilities on the logit rows, 0 elsewhere."""
        w = torch.zeros(self.adjacency_matrix.shape[0])
        w[self.logit_offset:] = self.logit_probabilities
        return w


# ----------------------------------------------------------------------------------------------- building
def frozen_hook_names(model: HookedTransformer) -> list[str]:
    """The hook points the graph treats as constants: every attention pattern and every normalisation scale the
    architecture has (every hook whose name ends in ``hook_scale``: ``ln1``, ``ln2``, ``ln_final`` and, in
    Gemma 3, also ``ln1_post``, ``ln2_post``, ``attn.q_norm`` and ``attn.k_norm``)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    return names + [n for n in model.hook_dict if n.endswith("hook_scale")]


def _freeze_hooks(model: HookedTransformer) -> list:
    """Hooks that detach attention patterns and LayerNorm scales (their values stay, their gradient stops)."""
    return [(n, lambda t, hook: t.detach()) for n in frozen_hook_names(model)]


def _run_blocks(model: HookedTransformer, x: Tensor, start: int, stop: int) -> Tensor:
    """Residual stream after block ``stop - 1`` given the residual stream before block ``start``."""
    for l in range(start, stop):
        x = model.blocks[l](x)
    return x


def _check_sae(sae, layer: int) -> None:
    if getattr(sae.cfg, "normalize_activations", "none") != "none":
        raise ValueError(f"SAE of layer {layer}: attribution needs the SAE to read the raw residual stream; fold "
                         f"its activation normalisation ({sae.cfg.normalize_activations}) into the weights first")


def decoder_directions(sae) -> Tensor:
    """[d_sae, d_model]: what one unit of each feature's activation adds to the residual stream (``W_dec``,
    divided by its row norm for SAEs trained with ``rescale_acts_by_decoder_norm``)."""
    W = sae.W_dec.detach()
    return W / W.norm(dim=-1, keepdim=True) if rescales_by_decoder_norm(sae) else W


def _logit_targets(logits: Tensor, cfg: GraphConfig, targets: Sequence[int] | None) -> tuple[list[int], Tensor, bool]:
    probs = logits.softmax(-1)
    if targets is not None:
        return list(targets), torch.full((len(targets),), 1.0 / len(targets)), True
    p, idx = probs.sort(descending=True)
    n = int((p.cumsum(0) < cfg.desired_logit_prob).sum()) + 1
    n = min(n, cfg.max_n_logits)
    return idx[:n].tolist(), p[:n].clone(), False


def _segment_grads(model, x_src: Tensor, start: int, stop: int, target_fn, target_pos: Tensor, batch: int,
                   max_tokens: int):
    """Gradients of each target w.r.t. the source residual stream ``x_src`` [pos, d_model].

    ``target_pos`` [n_targets] (ascending) is each target's position: a batch only runs the causal prefix up
    to its last target's position, with at most ``max_tokens`` rows x positions. ``target_fn(y, rows)`` maps
    the segment output ``y`` [b, prefix, d] and target indices ``rows`` to the [b] target values.
    Returns ([n_targets, pos, d_model] gradients, zero beyond each prefix; number of backward passes)."""
    n = len(target_pos)
    grads, n_bwd, s = torch.zeros(n, *x_src.shape, dtype=x_src.dtype), 0, 0
    while s < n:
        prefix = int(target_pos[min(s + batch, n) - 1]) + 1
        e = min(n, s + max(1, min(batch, max_tokens // prefix)))
        prefix = int(target_pos[e - 1]) + 1
        rows = torch.arange(s, e)
        x = x_src[:prefix].detach().expand(len(rows), prefix, x_src.shape[1]).clone().requires_grad_(True)
        with model.hooks(fwd_hooks=_freeze_hooks(model)):
            y = _run_blocks(model, x, start, stop)
            target_fn(y, rows).sum().backward()
        grads[s:e, :prefix] = x.grad
        n_bwd, s = n_bwd + 1, e
    return grads, n_bwd


@torch.no_grad()
def _prompt_activations(model: HookedTransformer, saes: Mapping[int, object], layers: list[int], tokens: Tensor,
                        fwd_hooks=()) -> tuple:
    """One forward pass of the prompt (``fwd_hooks`` active): ``(logits, x_emb [pos, d], {l: x_l}, {l: acts_l
    [pos, d_sae]}, {l: err_l})`` with ``x_l`` the residual after block ``l`` and ``err_l = x_l - decode(acts_l)``."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in layers]
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    xs = {l: cache[f"blocks.{l}.hook_resid_post"][0] for l in layers}
    acts = {l: saes[l].encode(xs[l]) for l in layers}
    errs = {l: xs[l] - saes[l].decode(acts[l]) for l in layers}
    return logits, cache["blocks.0.hook_resid_pre"][0], xs, acts, errs


def _feature_nodes(saes: Mapping[int, object], acts: Mapping[int, Tensor], cfg: GraphConfig) -> dict[int, Tensor]:
    """The activations that become feature nodes: ``acts`` without position 0 (``cfg.exclude_bos``) and, with
    ``cfg.max_feature_nodes``, at each layer only the largest ``activation x decoder-row norm`` over positions
    (per layer, since residual norms, and so activations, grow with depth)."""
    kept = {l: a.clone() for l, a in acts.items()}
    if cfg.exclude_bos:
        for a in kept.values():
            a[0] = 0.0
    if cfg.max_feature_nodes:
        for l, a in kept.items():
            score = (a * decoder_directions(saes[l]).norm(dim=-1)).flatten()
            if int((score > 0).sum()) > cfg.max_feature_nodes:
                drop = torch.ones_like(score, dtype=torch.bool)
                drop[score.topk(cfg.max_feature_nodes).indices] = False
                a.view(-1)[drop] = 0.0
    return kept


def build_graph(model: HookedTransformer, saes: Mapping[int, object], prompt: str,
                targets: Sequence[int | str] | None = None, cfg: GraphConfig | None = None,
                fwd_hooks=()) -> AttributionGraph:
    """Attribution graph of ``prompt`` (see :class:`AttributionGraph` for the node order).

    Args:
        saes: ``{layer: SAE}`` for residual-stream SAEs at ``blocks.{layer}.hook_resid_post``.
        targets: target tokens (ids or words) whose logits at the last position the graph explains;
            ``None``: the top logits up to ``cfg.desired_logit_prob`` cumulative probability.
        fwd_hooks: hooks active in the forward pass that sets the activations (e.g. a steering policy):
            the graph is then the steered run's, linearised at the steered activations; additive edits
            are constants and add no nodes (they show up in the SAE features that read them).
    """
    cfg = cfg or GraphConfig()
    layers = sorted(saes)
    if not layers or layers[-1] >= model.cfg.n_layers or layers[0] < 0:
        raise ValueError(f"SAE layers {layers} must be a non-empty subset of 0..{model.cfg.n_layers - 1}")
    for l in layers:
        _check_sae(saes[l], l)
    tokens = model.to_tokens(prompt)
    logits, x_emb, xs, all_acts, _ = _prompt_activations(model, saes, layers, tokens, fwd_hooks)
    acts = _feature_nodes(saes, all_acts, cfg)
    with torch.no_grad():  # what the feature nodes do not carry (SAE error, BOS, capped features) is the error node
        errs = {l: xs[l] - saes[l].decode(acts[l]) for l in layers}
    if targets is not None:
        targets = [t if isinstance(t, int) else model.to_single_token(t) for t in targets]
    logit_tokens, logit_probs, given = _logit_targets(logits[0, -1], cfg, targets)

    active = {l: acts[l].nonzero() for l in layers}  # [n_l, 2] (pos, feature), sorted
    feats = torch.cat([torch.cat([torch.full((len(active[l]), 1), l), active[l]], 1) for l in layers])
    values = torch.cat([acts[l][active[l][:, 0], active[l][:, 1]] for l in layers])
    by_pos = torch.cat([all_acts[l][:, active[l][:, 1]].T for l in layers])
    F, P, nL, nT = len(feats), tokens.shape[1], len(layers), len(logit_tokens)
    offsets = torch.tensor([0] + [len(active[l]) for l in layers]).cumsum(0)
    A = torch.zeros(F + (nL + 1) * P + nT, F + (nL + 1) * P + nT)
    n_bwd = 0

    def fill(rows: Tensor, grads: Tensor, j_src: int | None) -> None:
        """Write the edges into target ``rows`` from the sources of SAE layer index ``j_src`` (None: embeddings)."""
        if j_src is None:
            tok0 = F + nL * P
            A[rows, tok0: tok0 + P] = torch.einsum("bpd,pd->bp", grads, x_emb).to(A.dtype)
            return
        l = layers[j_src]
        pos, fid = active[l][:, 0], active[l][:, 1]
        W_dec, vals = decoder_directions(saes[l]), values[offsets[j_src]: offsets[j_src + 1]]
        for c in range(0, len(rows), 32):  # [32, pos, d_sae] at a time, not [b, n_src, d_model]
            through = grads[c: c + 32] @ W_dec.T
            A[rows[c: c + 32], offsets[j_src]: offsets[j_src + 1]] = (through[:, pos, fid] * vals).to(A.dtype)
        e0 = F + j_src * P
        A[rows, e0: e0 + P] = torch.einsum("bpd,pd->bp", grads, errs[l]).to(A.dtype)

    for j, l in enumerate(layers):
        pos, fid = active[l][:, 0], active[l][:, 1]
        sae = saes[l]

        def feature_target(y, rows, sae=sae, pos=pos, fid=fid):
            x_in = sae.process_sae_in(y[torch.arange(len(rows)), pos[rows]])  # [b, d]
            pre = (x_in * sae.W_enc[:, fid[rows]].T).sum(-1) + sae.b_enc[fid[rows]]
            return pre * sae.W_dec[fid[rows]].norm(dim=-1) if rescales_by_decoder_norm(sae) else pre

        start = 0 if j == 0 else layers[j - 1] + 1
        src = x_emb if j == 0 else xs[layers[j - 1]]
        grads, nb = _segment_grads(model, src, start, l + 1, feature_target, pos, cfg.batch_size, cfg.max_batch_tokens)
        n_bwd += nb
        fill(offsets[j] + torch.arange(len(pos)), grads, None if j == 0 else j - 1)

    tgt = torch.tensor(logit_tokens)

    def logit_target(y, rows):
        lg = model.unembed(model.ln_final(y))[:, -1]  # [b, d_vocab]
        out = lg[torch.arange(len(rows)), tgt[rows]]
        return out - lg.mean(-1) if cfg.demean_logits else out

    grads, nb = _segment_grads(model, xs[layers[-1]], layers[-1] + 1, model.cfg.n_layers, logit_target,
                               torch.full((nT,), P - 1), cfg.batch_size, cfg.max_batch_tokens)
    n_bwd += nb
    fill(F + (nL + 1) * P + torch.arange(nT), grads, nL - 1)
    words = [model.tokenizer.decode([int(t)]) for t in tokens[0]]
    return AttributionGraph(prompt, words, tokens[0].tolist(), layers, feats, values, by_pos, A,
                            logit_tokens, logit_probs, given, n_bwd, d_sae={l: int(saes[l].cfg.d_sae) for l in layers})


# ----------------------------------------------------------------------------------------------- influence
def normalize_matrix(A: Tensor) -> Tensor:
    """``|A|`` with each row scaled to sum to 1 (rows without inputs stay 0)."""
    B = A.abs()
    return B / B.sum(1, keepdim=True).clamp(min=1e-10)


def compute_influence(A: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """``w A + w A^2 + ...``: the total influence of every node on the weighted targets (A is a DAG)."""
    current = weights @ A
    influence = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return influence
        current = current @ A
        influence += current
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def cumulative_influence(influence: Float[Tensor, "n_nodes"]) -> Float[Tensor, "n_nodes"]:
    """circuit-tracer's ``cumulative_scores``: with the nodes sorted by influence (largest first), each node's
    share of the total influence held by it and every node above it, in [0, 1]. The most influential node has
    the smallest value; pruning at ``node_threshold`` keeps about the nodes with a share <= the threshold (the
    rule circuit-tracer's viewer applies to the ``influence`` field of its JSON)."""
    order = influence.argsort(descending=True, stable=True)
    cum = torch.zeros_like(influence)
    cum[order] = influence[order].cumsum(0) / influence.sum().clamp(min=1e-10)
    return cum.clamp(0.0, 1.0)


def _find_threshold(scores: Tensor, share: float) -> Tensor:
    """The smallest score among the top scores that together hold ``share`` of the total."""
    s = scores.flatten().sort(descending=True).values
    cum = s.cumsum(0) / s.sum().clamp(min=1e-10)
    return s[min(int(torch.searchsorted(cum, torch.tensor(share))), len(s) - 1)]


@dataclass
class PruneResult:
    """Masks over the node order of :class:`AttributionGraph`.

    node_mask: [n_nodes] kept nodes; edge_mask: [n_nodes, n_nodes] kept edges (target, source);
    cumulative_scores: [n_nodes] each node's cumulative influence share (:func:`cumulative_influence`, in [0, 1]).
    influence: [n_nodes] each node's influence on the targets (unpruned graph)."""

    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor
    influence: Tensor


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Keep the nodes and edges with the largest cumulative influence on the logits (circuit-tracer's rule).

    Tokens and logits are always kept; a feature or error node without kept outgoing edges, or a feature
    without kept incoming edges, is dropped, repeatedly until nothing changes."""
    A, w = graph.adjacency_matrix, graph.logit_weights()
    n_keep = len(graph.logit_tokens) + graph.n_pos  # token and logit nodes at the end
    influence = compute_influence(normalize_matrix(A), w)
    node_mask = influence >= _find_threshold(influence, node_threshold)
    node_mask[-n_keep:] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalize_matrix(pruned)
    edge_scores = norm * (compute_influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= _find_threshold(edge_scores, edge_threshold)
    edge_mask &= edge_scores > 0
    F = graph.n_features
    while True:
        old = node_mask.clone()
        node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
        node_mask[:F] &= edge_mask[:F].any(1)
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        if torch.equal(old, node_mask):
            break
    return PruneResult(node_mask, edge_mask, cumulative_influence(influence), influence)


@dataclass
class GraphScores:
    """circuit-tracer's two formulas on a residual-SAE graph, named so as not to claim circuit-tracer's meaning.

    residual_replacement: share of the token + error influence that enters through token embeddings rather than
        SAE error nodes (circuit-tracer's replacement score). With transcoders an error node is one MLP's
        reconstruction error and every path is exact; here an error node is what a residual-stream SAE misses of
        the whole stream, and the paths are first-order (module docstring), so the numbers are not comparable
        with circuit-tracer's.
    residual_completeness: influence-weighted share of each node's input that comes from non-error nodes
        (circuit-tracer's completeness score formula), with the same caveat."""

    residual_replacement: float
    residual_completeness: float


def graph_scores(graph: AttributionGraph) -> GraphScores:
    """The residual-SAE replacement and completeness scores of the unpruned graph (:class:`GraphScores`)."""
    A, w = graph.adjacency_matrix, graph.logit_weights()
    F, nL, P = graph.n_features, len(graph.layers), graph.n_pos
    norm = normalize_matrix(A)
    infl = compute_influence(norm, w)
    err = infl[F: F + nL * P].sum()
    tok = infl[F + nL * P: F + (nL + 1) * P].sum()
    non_error = 1 - norm[:, F: F + nL * P].sum(1)
    out = infl + w
    return GraphScores(float(tok / (tok + err)), float((non_error * out).sum() / out.sum()))


# ----------------------------------------------------------------------------------------------- positions
def token_position(model: HookedTransformer, prompt: str, text: str, occurrence: int = -1) -> int:
    """Position (in ``model.to_tokens(prompt)``, BOS = 0) of the token that ends the ``occurrence``-th copy of
    ``text`` in ``prompt`` (default: the last copy). Found from decoded token offsets (the decoded prefix grows
    token by token), so it works for any tokenizer: a word-level one and a subword one alike."""
    starts, i = [], prompt.find(text)
    while i >= 0:
        starts.append(i)
        i = prompt.find(text, i + 1)
    if not starts:
        raise ValueError(f"{text!r} does not occur in the prompt {prompt[:80]!r}")
    end = starts[occurrence] + len(text)
    ids = model.to_tokens(prompt)[0].tolist()
    for p in range(1, len(ids)):  # ids[0] is BOS; the decoded ids[1:p+1] are the prompt's first characters
        if len(model.tokenizer.decode(ids[1: p + 1])) >= end:
            return p
    raise ValueError(f"could not place {text!r} among the prompt's tokens")
