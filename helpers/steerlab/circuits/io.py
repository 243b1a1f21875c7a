"""Attribution graphs as networkx graphs and as circuit-tracer JSON, with MI explanations on the feature nodes.

:mod:`steerlab.graph` builds and prunes an :class:`~steerlab.graph.AttributionGraph` (tensors); this module turns
it into what people look at and share: :func:`to_networkx` (circuit-tracer node ids, with activation, influence
and explanation attributes), :func:`target_node`, :func:`to_json` / :func:`from_json` (the circuit-tracer / Neuronpedia graph format, which
``steerlab.viz.graph_view`` renders). The explanation words shown on feature nodes are computed by
``steerlab.evals.circuits.feature_explanations`` and passed in.

Two influence values per node: ``influence`` in networkx is the raw influence on the targets (larger = more
influential; what steerlab sorts by), ``cumulative_influence`` the share circuit-tracer writes as ``influence``
in its JSON (:func:`steerlab.circuits.graph.cumulative_influence`: in [0, 1], smaller = more influential; its
viewer keeps the nodes whose share is <= the pruning threshold). :func:`to_json` writes the share as
``influence`` and the raw value as ``steerlab_influence``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import networkx as nx
import torch

from steerlab.circuits.graph import (ATTRIBUTION, AttributionGraph, PruneResult, compute_influence,
                                     cumulative_influence, normalize_matrix)


# ----------------------------------------------------------------------------------------------- networkx
def _node_ids(graph: AttributionGraph, n_model_layers: int) -> list[str]:
    """circuit-tracer's node ids (``frontend/graph_models.py``): features ``{layer}_{feature}_{pos}``, errors
    ``{layer}_-1_{pos}`` (its current form; the first release's ``0_{layer}_{pos}`` clashed with layer-0 features),
    embeddings ``E_{token id}_{pos}``, logits ``{n_layers+1}_{token id}_{pos}``."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.active_features.tolist()]
    ids += [f"{l}_-1_{p}" for l in graph.layers for p in range(graph.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(graph.input_ids)]
    ids += [f"{n_model_layers + 1}_{t}_{graph.n_pos - 1}" for t in graph.logit_tokens]
    return ids


def to_networkx(graph: AttributionGraph, pruned: PruneResult | None = None,
                explanations: Mapping[tuple[int, int], str] | None = None, n_model_layers: int | None = None,
                tokenizer=None) -> nx.DiGraph:
    """The (pruned) graph as a ``networkx.DiGraph`` keyed by node id; edges go source -> target.

    Node attributes: ``kind`` (feature / error / embedding / logit), ``layer`` (SAE layer; -1 for
    embeddings, ``n_model_layers`` for logits), ``position``, ``feature`` (id, -1 if none), ``activation``,
    ``influence`` (raw), ``cumulative_influence`` (share in [0, 1], circuit-tracer's JSON ``influence``),
    ``explanation`` (words), ``token`` (the token at the position, or the logit's token), ``acts_by_pos`` (a
    feature's activation at every position), ``prob`` and ``is_target_logit`` (logit nodes: True for the first
    target only, the top logit when none were given, as circuit-tracer marks it). Edge: ``weight``.
    Graph attributes: ``prompt``, ``input_tokens``, ``layers``, ``n_layers``, ``d_sae`` (the widest SAE's width,
    from ``graph.d_sae``; None if unknown)."""
    n_layers = n_model_layers if n_model_layers is not None else max(graph.layers) + 1
    pruned = pruned or PruneResult(torch.ones(graph.adjacency_matrix.shape[0], dtype=torch.bool),
                                   graph.adjacency_matrix != 0, torch.zeros(0), torch.zeros(0))
    influence = pruned.influence if len(pruned.influence) else compute_influence(
        normalize_matrix(graph.adjacency_matrix), graph.logit_weights())
    cumulative = cumulative_influence(influence)
    explanations = explanations or {}
    ids, F, P = _node_ids(graph, n_layers), graph.n_features, graph.n_pos
    word = (lambda t: tokenizer.convert_ids_to_tokens(int(t))) if tokenizer else (lambda t: str(t))
    G = nx.DiGraph(prompt=graph.prompt, input_tokens=graph.input_tokens, layers=graph.layers, n_layers=n_layers,
                   d_sae=max(graph.d_sae.values()) if graph.d_sae else None)
    for i in pruned.node_mask.nonzero().flatten().tolist():
        attrs = dict(influence=float(influence[i]), cumulative_influence=float(cumulative[i]), feature=-1,
                     activation=None, explanation="")
        if i < F:
            l, p, f = graph.active_features[i].tolist()
            attrs.update(kind="feature", layer=l, position=p, feature=f, activation=float(graph.activation_values[i]),
                         explanation=explanations.get((l, f), ""), acts_by_pos=graph.feature_acts_by_pos[i].tolist())
        elif i < graph.token_index(0):
            j, p = divmod(i - F, P)
            attrs.update(kind="error", layer=graph.layers[j], position=p)
        elif i < graph.logit_offset:
            attrs.update(kind="embedding", layer=-1, position=i - graph.token_index(0))
        else:
            k = i - graph.logit_offset
            attrs.update(kind="logit", layer=n_layers, position=P - 1, feature=graph.logit_tokens[k],
                         prob=float(graph.logit_probabilities[k]), token=word(graph.logit_tokens[k]),
                         is_target_logit=k == 0)
        attrs.setdefault("token", graph.input_tokens[attrs["position"]])
        G.add_node(ids[i], **attrs)
    for t, s in pruned.edge_mask.nonzero().tolist():
        if ids[s] in G and ids[t] in G:
            G.add_edge(ids[s], ids[t], weight=float(graph.adjacency_matrix[t, s]))
    return G


def target_node(G: nx.DiGraph, token: str | None = None) -> str:
    """Id of the logit node for ``token`` (default: the target logit, :func:`_target_logit`)."""
    if token is None and any(d["kind"] == "logit" for _, d in G.nodes(data=True)):
        return _target_logit(G)
    logits = [n for n, d in G.nodes(data=True) if d["kind"] == "logit" and (token is None or d["token"] == token)]
    if not logits:
        raise KeyError(f"graph has no logit node for {token!r}")
    return logits[0]


def _target_logit(G: nx.DiGraph) -> str | None:
    """The one logit node marked ``is_target_logit`` (a graph without marks: the most probable logit)."""
    logits = [(n, d) for n, d in G.nodes(data=True) if d["kind"] == "logit"]
    marked = [n for n, d in logits if d.get("is_target_logit")]
    if marked:
        return marked[0]
    return max(logits, key=lambda x: x[1].get("prob", 0.0))[0] if logits else None


def feature_offset(d_sae: int) -> int:
    """circuit-tracer's feature-id offset: ``10 ** ceil(log10(d_sae))``; a feature node's JSON ``feature`` is
    ``feature id + offset * layer``. It depends on the SAE width only, so one feature has one id in every graph."""
    if d_sae < 1:
        raise ValueError(f"SAE width must be positive (got {d_sae})")
    return 10 ** math.ceil(math.log10(d_sae))


# ----------------------------------------------------------------------------------------------- JSON
_FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                  "embedding": "embedding", "logit": "logit"}


def to_json(G: nx.DiGraph, slug: str = "steerlab-graph", scan: str = "tinyworld", node_threshold: float | None = None,
            d_sae: int | None = None) -> dict:
    """The graph in circuit-tracer's attribution-graph schema (``frontend/graph_models.py``, read by its viewer
    and Neuronpedia): ``metadata`` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
    schema_version), ``qParams`` (pinnedIds, supernodes, linkType, clickedId, sg_pos), ``nodes`` (node_id, feature,
    layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx, reverse_ctx_idx, jsNodeId, clerp,
    influence, activation) and ``links`` (source, target, weight).

    As circuit-tracer writes them: ``influence`` is the cumulative influence share in [0, 1]; ``is_target_logit``
    is True on the target logit only; a feature's ``feature`` is ``id + offset * layer`` with
    :func:`feature_offset` of the SAE width ``d_sae`` (default: ``G.graph["d_sae"]``); ``jsNodeId`` as its
    node constructors build it. Extra fields, which the viewers ignore: ``metadata.attribution`` (how the edges
    were computed, :data:`steerlab.circuits.graph.ATTRIBUTION`), ``metadata.d_sae``, and per node
    ``steerlab_kind``, ``steerlab_feature``, ``steerlab_token``, ``steerlab_influence`` (raw) and
    ``token_activations`` (feature nodes)."""
    n_layers, n_pos = G.graph["n_layers"], len(G.graph["input_tokens"])
    d_sae = d_sae if d_sae is not None else G.graph.get("d_sae")
    if d_sae is None:
        raise ValueError("to_json needs the SAE width for circuit-tracer's feature-id offset: pass d_sae= "
                         "(graphs from steerlab.circuits.graph.build_graph carry it)")
    offset, target = feature_offset(int(d_sae)), _target_logit(G)
    nodes = [_json_node(nid, d, n_layers, n_pos, offset, nid == target) for nid, d in G.nodes(data=True)]
    return {
        "metadata": {"slug": slug, "scan": scan, "prompt_tokens": G.graph["input_tokens"],
                     "prompt": G.graph["prompt"], "node_threshold": node_threshold, "schema_version": 1,
                     "transcoder_list": [f"blocks.{l}.hook_resid_post" for l in G.graph["layers"]],
                     "attribution": ATTRIBUTION, "d_sae": int(d_sae)},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": d["weight"]} for s, t, d in G.edges(data=True)],
    }


def _json_node(nid: str, d: dict, n_layers: int, n_pos: int, offset: int, is_target: bool) -> dict:
    """One node of :func:`to_json` (``jsNodeId`` as circuit-tracer's ``Node.*_node`` constructors build it)."""
    kind, pos = d["kind"], d["position"]
    layer = {"embedding": "E", "logit": str(n_layers + 1)}.get(kind, str(d["layer"]))
    if kind == "feature":
        feature = d["feature"] + offset * d["layer"]
    else:  # circuit-tracer: -1 for errors, the position for embeddings, the token id for logits
        feature = {"error": -1, "embedding": pos}.get(kind, d["feature"])
    tok = nid.split("_")[1]  # embedding and logit ids (from _node_ids) hold the token id here
    js = {"feature": f"{layer}_{d['feature']}-0", "error": f"{layer}_-1-{pos}", "embedding": f"E_{tok}-{pos}",
          "logit": f"L_{tok}-{pos}"}[kind]
    clerp = d["explanation"] if kind != "logit" else f'Output "{d["token"]}" (p={d["prob"]:.3f})'
    share = d.get("cumulative_influence")
    node = dict(node_id=nid, feature=int(feature), layer=layer, ctx_idx=pos, feature_type=_FEATURE_TYPES[kind],
                token_prob=float(d.get("prob", 0.0)), is_target_logit=bool(is_target), run_idx=0,
                reverse_ctx_idx=n_pos - 1 - pos, jsNodeId=js, clerp=clerp,
                influence=None if share is None else float(share), activation=d["activation"],
                steerlab_kind=kind, steerlab_feature=d["feature"], steerlab_token=d["token"],
                steerlab_influence=d["influence"])
    if "acts_by_pos" in d:
        node["token_activations"] = d["acts_by_pos"]
    return node


def from_json(data: dict | str | Path) -> nx.DiGraph:
    """Load a graph written by :func:`to_json` (a dict, a JSON string or a file path) back into networkx.

    The JSON ``influence`` (cumulative share) becomes ``cumulative_influence``; ``influence`` (raw) is read from
    ``steerlab_influence`` and is None in a graph circuit-tracer wrote."""
    if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        data = json.loads(Path(data).read_text())
    elif isinstance(data, str):
        data = json.loads(data)
    missing = {"metadata", "nodes", "links"} - set(data)
    if missing:
        raise ValueError(f"not an attribution-graph JSON: missing {sorted(missing)}")
    meta = data["metadata"]
    layers = [int(t.split(".")[1]) for t in meta.get("transcoder_list", [])]
    logit_layer = max((int(n["layer"]) for n in data["nodes"] if n["feature_type"] == "logit"), default=1)
    G = nx.DiGraph(prompt=meta["prompt"], input_tokens=meta["prompt_tokens"], layers=layers, n_layers=logit_layer - 1,
                   d_sae=meta.get("d_sae"))
    kinds = {v: k for k, v in _FEATURE_TYPES.items()}
    for n in data["nodes"]:
        kind = n.get("steerlab_kind", kinds.get(n["feature_type"], "feature"))
        layer = {"embedding": -1, "logit": logit_layer - 1}.get(kind, None)
        attrs = dict(kind=kind, layer=int(n["layer"]) if layer is None else layer, position=n["ctx_idx"],
                     feature=n.get("steerlab_feature", n["feature"]), activation=n.get("activation"),
                     influence=n.get("steerlab_influence"), cumulative_influence=n.get("influence"),
                     explanation=n.get("clerp", "") if kind != "logit" else "", token=n.get("steerlab_token", ""))
        if kind == "logit":
            attrs.update(prob=n.get("token_prob", 0.0), is_target_logit=bool(n.get("is_target_logit", False)))
        if "token_activations" in n:
            attrs["acts_by_pos"] = n["token_activations"]
        G.add_node(n["node_id"], **attrs)
    for e in data["links"]:
        G.add_edge(e["source"], e["target"], weight=e["weight"])
    return G
