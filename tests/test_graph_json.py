"""Our attribution-graph JSON against circuit-tracer's own schema, field by field, with the value ranges.

``CT_SCHEMA`` is written down from circuit-tracer's ``circuit_tracer/frontend/graph_models.py`` (the pydantic
models ``Metadata``, ``QParams``, ``Node``, ``Link``, ``Model``) and the rules its ``utils/create_graph_files.py``
and its viewer (``frontend/assets/attribution_graph/util-cg.js``) apply: ``influence`` is the cumulative influence
share (``prune_graph``'s ``cumulative_scores``) and the viewer keeps nodes with ``influence <= pruningThreshold``;
``is_target_logit`` is set on the first logit only (``target_logit=pos == 0``); a feature's ``feature`` is
``feat_idx + 10 ** ceil(log10(num_features)) * layer``; node ids are ``{layer}_{feat}_{pos}``,
``{layer}_-1_{pos}`` (errors), ``E_{token}_{pos}``, ``{n_layers + 1}_{token}_{pos}``.
"""

import json
import math
import random
import re

import pytest

from steerlab.circuits import graph as G
from steerlab.circuits import io as GI

from test_graph import HAND, PROMPT, _hand_graph, tiny  # noqa: F401  (fixture)

# field -> (allowed JSON types, required?). "int" excludes bool; "float" accepts int (pydantic coerces it).
CT_SCHEMA = {
    "Model": {"metadata": ("Metadata", True), "qParams": ("QParams", True), "nodes": ("list[Node]", True),
              "links": ("list[Link]", True)},
    "Metadata": {"slug": ("str", True), "scan": ("str", True), "transcoder_list": ("list[str]", True),
                 "prompt_tokens": ("list[str]", True), "prompt": ("str", True),
                 "node_threshold": ("float|None", False), "schema_version": ("int|None", False)},
    "QParams": {"pinnedIds": ("list[str]", True), "supernodes": ("list[list[str]]", True), "linkType": ("str", True),
                "clickedId": ("str", True), "sg_pos": ("str", True)},
    "Node": {"node_id": ("str", True), "feature": ("int", True), "layer": ("str", True), "ctx_idx": ("int", True),
             "feature_type": ("str", True), "token_prob": ("float", False), "is_target_logit": ("bool", False),
             "run_idx": ("int", False), "reverse_ctx_idx": ("int", False), "jsNodeId": ("str", True),
             "clerp": ("str", False), "influence": ("float|None", False), "activation": ("float|None", False)},
    "Link": {"source": ("str", True), "target": ("str", True), "weight": ("float", True)},
}
FEATURE_TYPES = {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}


def _is(value, typ: str) -> bool:
    """Does a JSON value have the schema type ``typ``?"""
    if "|" in typ:
        return any(_is(value, t) for t in typ.split("|"))
    if typ == "None":
        return value is None
    if typ.startswith("list[") and typ.endswith("]"):
        return isinstance(value, list) and all(_is(v, typ[5:-1]) for v in value)
    if typ in CT_SCHEMA:
        return isinstance(value, dict) and not _violations(value, typ)
    if typ == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "bool": bool}[typ])


def _violations(obj: dict, model: str) -> list[str]:
    """Every field of ``model`` that ``obj`` lacks (if required) or holds with the wrong type."""
    out = []
    for name, (typ, required) in CT_SCHEMA[model].items():
        if name not in obj:
            out += [f"{model}.{name} missing"] if required else []
        elif not _is(obj[name], typ):
            out.append(f"{model}.{name} = {str(obj[name])[:60]!r} is not {typ}")
    return out


def _check_against_circuit_tracer(data: dict, n_model_layers: int, d_sae: int) -> None:
    """``data`` satisfies circuit-tracer's schema, types and value ranges (asserts)."""
    problems = _violations(data, "Model")
    for model, objs in (("Metadata", [data["metadata"]]), ("QParams", [data["qParams"]]),
                        ("Node", data["nodes"]), ("Link", data["links"])):
        for o in objs:
            problems += _violations(o, model)
    assert not problems, problems[:10]
    n_pos = len(data["metadata"]["prompt_tokens"])
    nodes, offset = data["nodes"], 10 ** math.ceil(math.log10(d_sae))
    ids = [n["node_id"] for n in nodes]
    assert len(set(ids)) == len(ids), "node ids must be unique"
    assert {e["source"] for e in data["links"]} | {e["target"] for e in data["links"]} <= set(ids)
    assert all(0.0 <= n["influence"] <= 1.0 for n in nodes), "influence is circuit-tracer's cumulative share"
    by_share = sorted(nodes, key=lambda n: n["influence"])  # a smaller share = more influential (raw influence)
    raw = [n["steerlab_influence"] for n in by_share]
    assert all(a >= b - 1e-9 for a, b in zip(raw, raw[1:])), "influence must fall as the raw influence rises"
    targets = [n for n in nodes if n["is_target_logit"]]
    assert len(targets) == 1 and targets[0]["feature_type"] == "logit"
    logit_layer = str(n_model_layers + 1)
    for n in nodes:
        assert n["feature_type"] in FEATURE_TYPES
        assert 0 <= n["ctx_idx"] < n_pos and n["reverse_ctx_idx"] == n_pos - 1 - n["ctx_idx"]
        kind, pos = n["feature_type"], n["ctx_idx"]
        if kind == "cross layer transcoder":
            layer, feat, p = map(int, re.fullmatch(r"(\d+)_(\d+)_(\d+)", n["node_id"]).groups())
            assert (str(layer), p) == (n["layer"], pos) and n["feature"] == feat + offset * layer
            assert feat < d_sae and n["jsNodeId"] == f"{layer}_{feat}-0" and n["activation"] is not None
        elif kind == "mlp reconstruction error":
            assert re.fullmatch(rf"{n['layer']}_-1_{pos}", n["node_id"]) and n["feature"] == -1
        elif kind == "embedding":
            assert re.fullmatch(rf"E_\d+_{pos}", n["node_id"]) and n["layer"] == "E" and n["feature"] == pos
        else:
            assert n["node_id"] == f"{logit_layer}_{n['feature']}_{n_pos - 1}" and n["layer"] == logit_layer
            assert 0.0 <= n["token_prob"] <= 1.0 and n["clerp"].startswith("Output ")
    assert data["metadata"]["attribution"].startswith("residual-SAE, first-order")


def test_our_graph_matches_circuit_tracers_schema(tiny):  # noqa: F811
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(max_n_logits=3, desired_logit_prob=0.999))
    assert len(g.logit_tokens) == 3  # several logits, so is_target_logit has a choice to get wrong
    nxg = GI.to_networkx(g, G.prune(g), n_model_layers=2, tokenizer=model.tokenizer)
    data = json.loads(json.dumps(GI.to_json(nxg, node_threshold=0.8)))  # what a file holds
    _check_against_circuit_tracer(data, n_model_layers=2, d_sae=24)
    target = next(n for n in data["nodes"] if n["is_target_logit"])
    assert target["feature"] == g.logit_tokens[0] and target["token_prob"] == pytest.approx(
        float(g.logit_probabilities.max()))  # the top logit
    # circuit-tracer's viewer keeps nodes with influence <= the node threshold: that is about the nodes we kept
    feats = [n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"]
    kept_by_viewer = [n for n in feats if n["influence"] <= 0.8]
    assert len(kept_by_viewer) >= 0.9 * len(feats) > 0


def test_feature_offset_depends_on_the_sae_width_only(tiny):  # noqa: F811
    """Two prompts with different active features give one feature the same JSON id (offset 100 for width 24)."""
    model, saes = tiny
    assert [GI.feature_offset(w) for w in (1, 9, 10, 24, 100, 16384, 65536)] == [1, 10, 10, 100, 100, 100000, 100000]
    ids = {}
    for prompt in (PROMPT, "question : the city ? answer :"):
        g = G.build_graph(model, saes, prompt, cfg=G.GraphConfig(max_n_logits=1))
        data = GI.to_json(GI.to_networkx(g, None, n_model_layers=2))
        _check_against_circuit_tracer(data, n_model_layers=2, d_sae=24)
        for n in data["nodes"]:
            if n["feature_type"] == "cross layer transcoder":
                ids.setdefault((n["layer"], n["steerlab_feature"]), set()).add(n["feature"])
    assert all(len(v) == 1 for v in ids.values())
    assert all(v == {int(l) * 100 + f} for (l, f), v in ids.items())  # the width (24), not the largest active id


def test_hand_graph_json_influence_is_the_cumulative_share():
    g = _hand_graph(HAND)
    g.d_sae = {0: 2}
    data = GI.to_json(GI.to_networkx(g, G.prune(g, 1.0, 1.0), n_model_layers=1))
    _check_against_circuit_tracer(data, n_model_layers=1, d_sae=2)
    share = {n["node_id"]: n["influence"] for n in data["nodes"]}
    assert share["0_0_1"] == pytest.approx(12.1 / 14.2) and share["0_-1_1"] == pytest.approx(14.1 / 14.2)
    assert share["E_5_1"] == pytest.approx(6.1 / 14.2) and share["2_7_1"] == pytest.approx(1.0)
    assert data["metadata"]["d_sae"] == 2 and next(n for n in data["nodes"] if n["node_id"] == "0_1_1")["feature"] == 1


def test_json_needs_the_sae_width_and_marks_one_target():
    g = _hand_graph(HAND)  # a hand-made graph carries no SAE width
    nxg = GI.to_networkx(g, None, n_model_layers=1)
    with pytest.raises(ValueError, match="d_sae"):
        GI.to_json(nxg)
    data = GI.to_json(nxg, d_sae=16384)
    assert next(n for n in data["nodes"] if n["node_id"] == "0_1_1")["feature"] == 1  # layer 0: no offset
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    back = GI.from_json(data)
    assert GI.target_node(back) == "2_7_1" and back.nodes["2_7_1"]["is_target_logit"]


def test_schema_checker_catches_what_circuit_tracer_rejects(tiny):  # noqa: F811
    """The checker above fails on raw influence, two targets, a missing field and a bool where an int belongs."""
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(max_n_logits=2, desired_logit_prob=0.999))
    good = GI.to_json(GI.to_networkx(g, G.prune(g), n_model_layers=2))
    _check_against_circuit_tracer(good, 2, 24)
    rng = random.Random(0)

    def broken(edit):
        data = json.loads(json.dumps(good))
        edit(data)
        return data

    def raw_influence(d):
        for n in d["nodes"]:
            n["influence"] = n["steerlab_influence"] * 10

    def two_targets(d):
        for n in d["nodes"]:
            n["is_target_logit"] = n["feature_type"] == "logit"

    assert sum(n["feature_type"] == "logit" for n in good["nodes"]) == 2
    for edit in (raw_influence, two_targets, lambda d: d["nodes"][rng.randrange(len(d["nodes"]))].pop("node_id"),
                 lambda d: d["nodes"][0].update(ctx_idx=True), lambda d: d["metadata"].pop("transcoder_list"),
                 lambda d: d["nodes"][0].update(feature=d["nodes"][0]["feature"] + 1)):
        with pytest.raises(AssertionError):
            _check_against_circuit_tracer(broken(edit), 2, 24)

