"""steerlab.universality and control.rebind: moving a policy between layers, RLVR's activation difference
projected onto SAE features, and its comparison with CRL's choices."""

import copy
import random
from collections import Counter

import pytest
import torch
from control_fixtures import tiny_model, tiny_sae

from steerlab import control
from steerlab.evals import control as rl_eval
from steerlab.evals import universality
from steerlab.world import score


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, world = tiny_model(tmp_path_factory.mktemp("tiny_univ"))
    return model, world, {0: tiny_sae(0, seed=1), 1: tiny_sae(1, seed=2)}


def _policy(saes, model, layer=1, seed=0):
    cfg = control.ControlConfig(layers=(layer,), d_model=32, d_sae=16, d_hidden=8, coef=5.0, mask="all", noop=True)
    pol = control.new_policy(cfg, saes[layer], model, seed=seed)
    torch.nn.init.normal_(pol.heads[str(layer)][-1].weight)  # a non-uniform policy
    return pol


def test_rebind_moves_the_head_with_its_weights_and_records_the_new_sae(tiny, tmp_path):
    model, _, saes = tiny
    pol = _policy(saes, model)
    moved = control.rebind(pol, saes, {1: 0}, model)
    assert moved.cfg.layers == (0,)
    x = torch.randn(20, 32)
    cand = torch.ones(20, 17, dtype=torch.bool)
    a_old = pol.act(1, x, cand, greedy=True)
    a_new = moved.act(0, x, cand, greedy=True)
    assert torch.equal(a_old.actions, a_new.actions)
    torch.testing.assert_close(a_old.logp, a_new.logp)
    control.save_policy(moved, tmp_path / "moved")
    control.load_policy(tmp_path / "moved", sae={0: saes[0]}, model=model)  # fingerprints are the new SAE's
    with pytest.raises(ValueError, match="another SAE for layer 0"):
        control.load_policy(tmp_path / "moved", sae={0: saes[1]}, model=model)


def test_rebind_refuses_what_shapes_or_layers_forbid(tiny):
    model, _, saes = tiny
    pol = _policy(saes, model)
    with pytest.raises(ValueError, match="cannot move the head of layer 1 to layer 0"):
        control.rebind(pol, {0: tiny_sae(0, d_sae=8)}, {1: 0})
    with pytest.raises(ValueError, match="does not steer"):
        control.rebind(pol, saes, {0: 1})
    with pytest.raises(ValueError, match="model has"):
        control.rebind(pol, {5: tiny_sae(5)}, {1: 5}, model)


def test_activation_difference_recovers_a_planted_shift(tiny):
    model, world, _ = tiny
    tuned = copy.deepcopy(model)
    v = torch.randn(32)
    with torch.no_grad():
        tuned.blocks[0].mlp.b_out += v  # shifts blocks.0.hook_resid_post by exactly v at every position
    rng = random.Random(0)
    exs = [world.mcqa(rng) for _ in range(4)]
    delta = universality.activation_difference(model, tuned, 0, exs)
    torch.testing.assert_close(delta, v, atol=1e-4, rtol=1e-4)
    assert universality.activation_difference(model, copy.deepcopy(model), 1, exs).abs().max() < 1e-5


def test_steered_positions_are_the_last_prompt_token_and_the_fed_back_tokens(tiny):
    model, world, _ = tiny
    ex = world.reasoning(random.Random(0))
    toks, pos = universality.steered_positions(model, [ex], ["1 + 2 = 3"])[0]
    n_prompt = model.to_tokens(ex.prompt).shape[1]
    assert len(toks) == n_prompt + 5 and (pos.start, pos.stop) == (n_prompt - 1, n_prompt + 4)
    _, pos0 = universality.steered_positions(model, [ex], [""])[0]
    assert (pos0.start, pos0.stop) == (n_prompt - 1, n_prompt)


def test_decoder_projection_and_alignment_on_a_known_answer():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 16, generator=g) * torch.linspace(0.5, 3, 64)[:, None]  # rows of unequal norm
    delta = 4 * W[7] / W[7].norm() + 0.01 * torch.randn(16, generator=g)
    p = universality.decoder_projection(delta, W)
    torch.testing.assert_close(p[3], (W[3] @ delta) / W[3].norm())
    assert int(p.argmax()) == 7
    same = universality.rlvr_alignment(p, Counter({7: 30}), W, delta, k=5)
    assert same["overlap_at_k"] == 1.0 and same["percentile"] == 1.0 and same["cosine"] > 0.99
    assert same["overlap_chance"] == 5 / 64 and same["n_crl_features"] == 1
    worst = int(p.argmin())
    opp = universality.rlvr_alignment(p, Counter({worst: 3}), W, delta, k=5)
    assert opp["overlap_at_k"] == 0.0 and opp["percentile"] == 0.0 and opp["cosine"] < 0
    none = universality.rlvr_alignment(p, Counter(), W, delta, k=5)
    assert none["overlap_at_k"] == 0.0 and none["cosine"] == 0.0
    with pytest.raises(ValueError, match="k must lie"):
        universality.rlvr_alignment(p, Counter(), W, delta, k=0)


def test_transfer_table_rows_and_a_noop_policy_changes_nothing(tiny):
    model, world, saes = tiny
    pol = _policy(saes, model)
    with torch.no_grad():  # the no-op (last action) wins everywhere: steering is the identity
        pol.heads["1"][-1].weight.zero_()
        pol.heads["1"][-1].bias.zero_()
        pol.heads["1"][-1].bias[-1] = 10.0
    rng = random.Random(1)
    sets = {"mcqa": [world.mcqa(rng) for _ in range(6)], "reasoning": [world.reasoning(rng) for _ in range(4)]}
    df = universality.transfer_table(model, saes, {"p": pol}, sets)
    assert len(df) == 4  # 2 layers x 2 tasks
    assert set(map(tuple, df["layers"])) == {(1,), (0,)}
    assert all(tuple(l) == (1,) for l in df.loc[df.trained, "layers"])
    assert (df["gain"].abs() < 1e-9).all()
    mcqa_base = sum(score(e, c) for e, c in zip(sets["mcqa"], rl_eval.answers(model, sets["mcqa"]))) / 6
    assert abs(df.loc[df.task == "mcqa", "base_acc"].iloc[0] - mcqa_base) < 1e-9
    narrow = {0: tiny_sae(0, d_sae=8), 1: saes[1]}
    assert set(map(tuple, universality.transfer_table(model, narrow, {"p": pol}, sets)["layers"])) == {(1,)}
