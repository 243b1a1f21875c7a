"""Faithfulness by intervention, the ground-truth source path, and the helpers behind them."""

import random

import networkx as nx
import pytest
import torch

from steerlab.evals import circuits as C
from steerlab.circuits import graph as G
from steerlab.sae import SAE_DIR

from test_graph import PROMPT, _hand_graph, tiny, tiny_gemma  # noqa: F401  (fixtures)

SHIPPED = all((SAE_DIR / "tinyworld" / f"blocks.{l}.hook_resid_post" / "cfg.json").is_file() for l in range(4))


def test_predicted_ablation_effects_by_hand():
    # f0 (act 2) -> f1 (act 4) -> logit; token -> f0. Edge f0->f1 = 2.0, f1->logit = 3.0
    A = torch.zeros(7, 7)
    A[1, 0], A[6, 1], A[0, 5] = 2.0, 3.0, 1.0
    g = _hand_graph(A.tolist())
    g.activation_values = torch.tensor([2.0, 4.0])
    pred = C.predicted_ablation_effects(g)
    # ablate f1: -3; ablate f0: its effect on pre_f1 is 2.0 (all of f1's 4.0 is half), logit loses 3 * 2/4
    assert pred.tolist() == pytest.approx([-1.5, -3.0])
    mask = torch.ones(7, 7, dtype=torch.bool)
    mask[1, 0] = False
    assert C.predicted_ablation_effects(g, mask).tolist() == pytest.approx([0.0, -3.0])


def test_replacement_model_is_exact_and_ablation_moves_the_logit(tiny):  # noqa: F811
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT, targets=["paris"])
    top = G.prune(g).influence[: g.n_features].argsort(descending=True)[:5].tolist()
    eff = C.actual_ablation_effects(model, saes, g, [-1] + top)
    assert eff[0].abs() < 1e-5  # nothing ablated: the spliced model with frozen errors is the model
    assert eff[1:].abs().max() > 1e-4
    f = C.faithfulness(model, saes, [g], top_n=8)
    assert len(f.per_prompt) == 1 and len(f.actual) == 8 and -1 <= f.mean <= 1


def test_ground_truth_path_on_hand_graph():
    H = nx.DiGraph(input_tokens=["<bos>", "context", ":", "rumor", "says"])
    H.add_node("E", kind="embedding", layer=-1, position=3, feature=-1, influence=1.0)
    H.add_node("a", kind="feature", layer=0, position=4, feature=7, influence=0.5)
    H.add_node("b", kind="feature", layer=1, position=4, feature=9, influence=0.4)
    H.add_node("L", kind="logit", layer=2, position=4, feature=5, influence=0.0)
    H.add_edges_from([("E", "a"), ("a", "L"), ("E", "b")])
    assert C.ground_truth_path(H, {(0, 4, 7): 0.95}).path == ["E", "a", "L"]
    assert not C.ground_truth_path(H, {(1, 4, 9): 0.95}).found  # b does not reach the logit
    assert C.source_marker_position(H.graph["input_tokens"]) == 3
    with pytest.raises(ValueError, match="source marker"):
        C.source_marker_position(["<bos>", "question"])


@pytest.mark.skipif(not SHIPPED, reason="shipped SAEs (data/saes/tinyworld) not present")
def test_shipped_graphs_are_faithful_and_hold_the_source_path(tinyworld):
    model, world = tinyworld
    from steerlab.sae import load_saes

    saes = load_saes()
    cfg = G.GraphConfig(node_threshold=0.95)
    rng = random.Random(5)
    mcqa = C.build_graphs(model, saes, [world.mcqa(rng) for _ in range(2)], cfg)
    assert C.faithfulness(model, saes, mcqa, 15, cfg).mean >= 0.8
    source_nodes = C.knowledge_source_features(model, saes, world, n_per_source=24)
    survey = C.source_path_survey(model, saes, world, 1, source_nodes, cfg, thresholds=(), seed=3)
    assert survey.table.found.all(), survey.table


def test_control_analysis_without_policies_is_none(tiny, tmp_path):  # noqa: F811
    model, saes = tiny
    assert C.control_analysis(model, saes, None, tmp_path, {}) is None


def test_frozen_interventions_run_batched_on_a_gemma_architecture(tiny_gemma):  # noqa: F811
    """Gemma 3's q/k norm scales flatten (batch, position, head) into one axis: freezing them for a batch of
    ablations repeats the clean values per row; with nothing ablated the spliced model is the model."""
    model, saes = tiny_gemma
    g = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(exclude_bos=True, max_n_logits=1))
    top = G.prune(g).influence[: g.n_features].argsort(descending=True)[:3].tolist()
    eff = C.actual_ablation_effects(model, saes, g, [-1] + top)
    assert eff[0].abs() < 1e-8 and eff[1:].abs().max() > 0
    live = C.actual_ablation_effects(model, saes, g, [-1] + top, freeze_attention=False)
    assert live[0].abs() < 1e-8
