"""Attribution graphs as networkx graphs and as circuit-tracer JSON, with MI explanations on the feature nodes.

:mod:`steerlab.graph` builds and prunes an :class:`~steerlab.graph.AttributionGraph` (tensors); this module turns
it into what people look at and share: :func:`to_networkx` (circuit-tracer node ids, with activation, influence
and explanation attributes), :func:`target_node`, :func:`to_json` / :func:`from_json` (the circuit-tracer / Neuronpedia graph format, which
``steerlab.viz.graph_view`` renders). The explanation words shown on feature nodes are computed by
``steerlab.evals.circuits.feature_explanations`` and passed in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import networkx as nx
import torch

from steerlab.circuits.graph import AttributionGraph, PruneResult, compute_influence, normalize_matrix


# ----------------------------------------------------------------------------------------------- networkx
def _node_ids(graph: AttributionGraph, n_model_layers: int) -> list[str]:
    """circuit-tracer node ids: ``{layer}_{feature}_{pos}``, ``E_{token id}_{pos}``, ``{n_layers+1}_{token id}_{pos}``;
    error nodes are ``err_{layer}_{pos}`` (circuit-tracer's ``0_{layer}_{pos}`` can clash with a layer-0 feature)."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.active_features.tolist()]
    ids += [f"err_{l}_{p}" for l in graph.layers for p in range(graph.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(graph.input_ids)]
    ids += [f"{n_model_layers + 1}_{t}_{graph.n_pos - 1}" for t in graph.logit_tokens]
    return ids


def to_networkx(graph: AttributionGraph, pruned: PruneResult | None = None,
                explanations: Mapping[tuple[int, int], str] | None = None, n_model_layers: int | None = None,
                tokenizer=None) -> nx.DiGraph:
    """The (pruned) graph as a ``networkx.DiGraph`` keyed by node id; edges go source -> target.

    Node attributes: ``kind`` (feature / error / embedding / logit), ``layer`` (SAE layer; -1 for
    embeddings, ``n_model_layers`` for logits), ``position``, ``feature`` (id, -1 if none), ``activation``,
    ``influence``, ``explanation`` (words), ``token`` (the token at the position, or the logit's token),
    ``acts_by_pos`` (a feature's activation at every position), ``prob`` (logit nodes). Edge: ``weight``."""
    n_layers = n_model_layers if n_model_layers is not None else max(graph.layers) + 1
    pruned = pruned or PruneResult(torch.ones(graph.adjacency_matrix.shape[0], dtype=torch.bool),
                                   graph.adjacency_matrix != 0, torch.zeros(0), torch.zeros(0))
    influence = pruned.influence if len(pruned.influence) else compute_influence(
        normalize_matrix(graph.adjacency_matrix), graph.logit_weights())
    explanations = explanations or {}
    ids, F, P = _node_ids(graph, n_layers), graph.n_features, graph.n_pos
    word = (lambda t: tokenizer.convert_ids_to_tokens(int(t))) if tokenizer else (lambda t: str(t))
    G = nx.DiGraph(prompt=graph.prompt, input_tokens=graph.input_tokens, layers=graph.layers, n_layers=n_layers)
    for i in pruned.node_mask.nonzero().flatten().tolist():
        attrs = dict(influence=float(influence[i]), feature=-1, activation=None, explanation="")
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
                         prob=float(graph.logit_probabilities[k]), token=word(graph.logit_tokens[k]))
        attrs.setdefault("token", graph.input_tokens[attrs["position"]])
        G.add_node(ids[i], **attrs)
    for t, s in pruned.edge_mask.nonzero().tolist():
        if ids[s] in G and ids[t] in G:
            G.add_edge(ids[s], ids[t], weight=float(graph.adjacency_matrix[t, s]))
    return G


def target_node(G: nx.DiGraph, token: str | None = None) -> str:
    """Id of the logit node for ``token`` (default: the first logit node)."""
    logits = [n for n, d in G.nodes(data=True) if d["kind"] == "logit" and (token is None or d["token"] == token)]
    if not logits:
        raise KeyError(f"graph has no logit node for {token!r}")
    return logits[0]


# ----------------------------------------------------------------------------------------------- JSON
_FEATURE_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error",
                  "embedding": "embedding", "logit": "logit"}


def to_json(G: nx.DiGraph, slug: str = "steerlab-graph", scan: str = "tinyworld", node_threshold: float | None = None
            ) -> dict:
    """The graph in the Neuronpedia / circuit-tracer attribution-graph schema: ``metadata``, ``qParams``,
    ``nodes`` (node_id, feature, layer, ctx_idx, feature_type, token_prob, is_target_logit, run_idx,
    reverse_ctx_idx, jsNodeId, clerp, influence, activation) and ``links`` (source, target, weight).
    ``token_activations`` (feature nodes) is an extra field the viewers ignore; ``steerlab_kind`` too."""
    n_layers, n_pos = G.graph["n_layers"], len(G.graph["input_tokens"])
    n_feat = 10 ** len(str(max([d["feature"] for _, d in G.nodes(data=True) if d["kind"] == "feature"] or [1])))
    nodes = []
    for nid, d in G.nodes(data=True):
        layer = {"embedding": "E", "logit": str(n_layers + 1)}.get(d["kind"], str(d["layer"]))
        feature = d["feature"] + n_feat * d["layer"] if d["kind"] == "feature" else (
            d["position"] if d["kind"] == "embedding" else d["feature"])
        clerp = d["explanation"] if d["kind"] != "logit" else f'Output "{d["token"]}" (p={d["prob"]:.3f})'
        node = dict(node_id=nid, feature=int(feature), layer=layer, ctx_idx=d["position"],
                    feature_type=_FEATURE_TYPES[d["kind"]], token_prob=d.get("prob", 0.0),
                    is_target_logit=d["kind"] == "logit", run_idx=0, reverse_ctx_idx=n_pos - 1 - d["position"],
                    jsNodeId=nid, clerp=clerp, influence=d["influence"], activation=d["activation"],
                    steerlab_kind=d["kind"], steerlab_feature=d["feature"], steerlab_token=d["token"])
        if "acts_by_pos" in d:
            node["token_activations"] = d["acts_by_pos"]
        nodes.append(node)
    return {
        "metadata": {"slug": slug, "scan": scan, "prompt_tokens": G.graph["input_tokens"],
                     "prompt": G.graph["prompt"], "node_threshold": node_threshold, "schema_version": 1,
                     "transcoder_list": [f"blocks.{l}.hook_resid_post" for l in G.graph["layers"]]},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": d["weight"]} for s, t, d in G.edges(data=True)],
    }


def from_json(data: dict | str | Path) -> nx.DiGraph:
    """Load a graph written by :func:`to_json` (a dict, a JSON string or a file path) back into networkx."""
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
    G = nx.DiGraph(prompt=meta["prompt"], input_tokens=meta["prompt_tokens"], layers=layers, n_layers=logit_layer - 1)
    kinds = {v: k for k, v in _FEATURE_TYPES.items()}
    for n in data["nodes"]:
        kind = n.get("steerlab_kind", kinds.get(n["feature_type"], "feature"))
        layer = {"embedding": -1, "logit": logit_layer - 1}.get(kind, None)
        attrs = dict(kind=kind, layer=int(n["layer"]) if layer is None else layer, position=n["ctx_idx"],
                     feature=n.get("steerlab_feature", n["feature"]), activation=n.get("activation"),
                     influence=n.get("influence"), explanation=n.get("clerp", "") if kind != "logit" else "",
                     token=n.get("steerlab_token", ""))
        if kind == "logit":
            attrs["prob"] = n.get("token_prob", 0.0)
        if "token_activations" in n:
            attrs["acts_by_pos"] = n["token_activations"]
        G.add_node(n["node_id"], **attrs)
    for e in data["links"]:
        G.add_edge(e["source"], e["target"], weight=e["weight"])
    return G
