"""steerlab.control: action space, steering effect, hooks under the KV cache, checkpoints that refuse mismatches."""

import json

import pytest
import torch
from control_fixtures import tiny_model, tiny_sae

from steerlab import control
from steerlab.control import rl
from steerlab.evals import control as rl_eval


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, world = tiny_model(tmp_path_factory.mktemp("tiny"))
    return model, world, {0: tiny_sae(0, seed=1), 1: tiny_sae(1, seed=2)}


def _cfg(**kw):
    return control.ControlConfig(**{"layers": (1,), "d_model": 32, "d_sae": 16, "d_hidden": 8, "coef": 5.0, **kw})


def test_config_rejects_bad_values_with_a_fix():
    with pytest.raises(ValueError, match="mask must be one of"):
        _cfg(mask="some")
    with pytest.raises(ValueError, match="distinct"):
        _cfg(layers=(1, 1))
    with pytest.raises(ValueError, match="exceeds d_sae"):
        _cfg(k=17)


def test_steer_adds_the_decoder_row_and_noop_adds_nothing():
    W = torch.randn(4, 3)
    x = torch.randn(2, 3)
    out = control.steer(x, W, torch.tensor([[1], [4]]), coef=2.0)  # 4 = d_sae = no-op
    torch.testing.assert_close(out[0], x[0] + 2.0 * W[1])
    torch.testing.assert_close(out[1], x[1])
    out2 = control.steer(x, W, torch.tensor([[0, 2], [1, 3]]), coef=1.0)
    torch.testing.assert_close(out2[0], x[0] + W[0] + W[2])


def test_the_default_is_the_papers_action_one_feature_always_added():
    cfg = _cfg()
    assert cfg.noop is False and cfg.n_actions == cfg.d_sae and cfg.k == 1
    assert _cfg(noop=True).n_actions == cfg.d_sae + 1


def _silent_sae(layer: int, seed: int = 0):
    """A TopK SAE whose every code is 0 (encoder bias -1000): no feature is ever active."""
    sae = tiny_sae(layer, seed=seed)
    with torch.no_grad():
        sae.b_enc.fill_(-1000.0)
    return sae


def test_active_mask_is_the_sae_code_support_plus_noop(tiny):
    _, _, saes = tiny
    x = torch.randn(5, 32)
    cand = control.candidates(saes[1], x, "active", noop=True)
    assert cand.shape == (5, 17) and cand[:, -1].all()
    assert torch.equal(cand[:, :16], saes[1].encode(x) > 0)
    assert cand[:, :16].sum(-1).max() <= 4  # TopK SAE with k = 4
    assert torch.equal(control.candidates(saes[1], x, "active", noop=False), saes[1].encode(x) > 0)  # >= k active
    assert control.candidates(saes[1], x, "all", noop=False).all()


def test_without_noop_a_mask_with_too_few_active_features_is_topped_up_by_pre_activation(tiny):
    """The pinned fallback of the paper's action: where fewer than k features are active, the mask adds the
    features of highest encoder pre-activation, so it always offers k (never an empty, NaN distribution)."""
    from steerlab.core.activations import encoder_preactivation

    _, _, saes = tiny
    x = torch.randn(6, 32)
    silent = _silent_sae(1)
    assert not (silent.encode(x) > 0).any()
    pre = encoder_preactivation(silent, x)
    for k in (1, 2):
        cand = control.candidates(silent, x, "active", noop=False, k=k)
        assert cand.shape == (6, 16) and (cand.sum(-1) == k).all()
        assert torch.equal(cand.nonzero()[:, 1].view(6, k).sort(-1).values, pre.topk(k, -1).indices.sort(-1).values)
    # with the no-op the mask is the active set as before: only "no steering" is left
    cand = control.candidates(silent, x, "active", noop=True)
    assert not cand[:, :16].any() and cand[:, 16].all()
    # 4 features active (TopK k = 4), k = 6: the 4 active ones stay, the 2 next-highest pre-activations join
    cand = control.candidates(saes[1], x, "active", noop=False, k=6)
    active = saes[1].encode(x) > 0
    assert (cand.sum(-1) == 6).all() and cand[active].all()
    rest = encoder_preactivation(saes[1], x).masked_fill(active, float("-inf")).topk(2, -1).indices
    assert cand.gather(1, rest).all()
    # the policy over the topped-up mask is a proper distribution and picks the fallback feature
    pol = control.new_policy(_cfg(), silent)
    torch.nn.init.normal_(pol.heads["1"][-1].weight)
    cand = control.candidates(silent, x, "active", noop=False)
    a = pol.act(1, x, cand, greedy=False)
    assert torch.isfinite(a.logp).all() and torch.isfinite(a.entropy).all() and torch.isfinite(a.kl).all()
    assert torch.equal(a.actions[:, 0], pre.argmax(-1))


def test_without_noop_the_reference_is_uniform_and_the_kl_is_an_entropy_bonus(tiny):
    _, _, saes = tiny
    pol = control.new_policy(_cfg(), saes[1])
    torch.nn.init.normal_(pol.heads["1"][-1].weight)
    x = torch.randn(32, 32)
    cand = control.candidates(saes[1], x, "active", noop=False)
    ref = pol.reference_logp(cand).exp() * cand
    torch.testing.assert_close(ref, cand / cand.sum(-1, keepdim=True))
    a = pol.evaluate(1, x, cand, torch.zeros(32, 1, dtype=torch.long))
    torch.testing.assert_close(a.kl, cand.sum(-1).float().log() - a.entropy)
    assert (a.kl > 1e-3).all()


@pytest.mark.parametrize("noop", [True, False])
def test_policy_never_picks_a_masked_action_and_reference_is_a_distribution(tiny, noop):
    _, _, saes = tiny
    pol = control.new_policy(_cfg(noop=noop), saes[1])
    torch.nn.init.normal_(pol.heads["1"][-1].weight)  # a non-uniform policy
    x = torch.randn(64, 32)
    cand = control.candidates(saes[1], x, "active", noop=noop)
    a = pol.act(1, x, cand, greedy=False)
    assert cand.gather(1, a.actions).all()
    ref = pol.reference_logp(cand).exp() * cand
    torch.testing.assert_close(ref.sum(-1), torch.ones(64))
    # KL(pi || ref) and entropy over the candidates, written out (non-candidates have p = 0 and add nothing)
    logits = pol.logits(1, x, cand)
    p = logits.softmax(-1)
    logp, ref_logp = logits.log_softmax(-1), pol.reference_logp(cand)
    kl = torch.where(cand, p * (logp - ref_logp), torch.zeros(())).sum(-1)
    ent = -torch.where(cand, p * logp, torch.zeros(())).sum(-1)
    torch.testing.assert_close(a.kl, kl)
    torch.testing.assert_close(a.entropy, ent)
    assert (kl > 1e-3).any()  # the policy is not the reference, so the KL pins something


def test_topk_log_prob_is_plackett_luce(tiny):
    _, _, saes = tiny
    pol = control.new_policy(_cfg(k=2, mask="all", noop=True), saes[1])
    torch.nn.init.normal_(pol.heads["1"][-1].weight)
    x = torch.randn(3, 32)
    cand = control.candidates(saes[1], x, "all", noop=True)
    acts = torch.tensor([[0, 5], [16, 2], [7, 3]])
    got = pol.evaluate(1, x, cand, acts).logp
    logits = pol.logits(1, x, cand)
    for i, (a, b) in enumerate(acts.tolist()):
        p1 = logits[i].log_softmax(-1)[a]
        rest = logits[i].clone()
        rest[a] = float("-inf")
        torch.testing.assert_close(got[i], p1 + rest.log_softmax(-1)[b])


def test_hooks_steer_every_generated_token_under_the_kv_cache(tiny):
    model, world, saes = tiny
    pol = control.new_policy(_cfg(layers=(0, 1), mask="all", noop=False, coef=50.0), saes, model)
    prompts = ["reason : 1 + 2 + 3 =", "reason : 4 + 5 + 6 ="]
    trace = control.Trace()
    g = rl.generate(model, prompts, 4, control.policy_hooks(pol, saes, trace=trace))
    n_calls = len(g.calls)
    assert len(trace.steps) == 2 * n_calls  # every call, both layers, in layer order
    assert [s["layer"] for s in trace.steps[:2]] == [0, 1]
    assert all(s["x"].shape == (2, 32) for s in trace.steps)
    # steering changes what is generated (coef 50 dominates a random 32-d residual), and chosen_features
    # reports one choice per generated step and layer
    plain = rl.generate(model, prompts, 4)
    assert g.tokens != plain.tokens
    chosen = rl_eval.chosen_features(model, pol, saes, prompts, 4)
    assert len(chosen[0]) == 2 * min(4, len(g.tokens[0]) + 1)
    assert {c["layer"] for c in chosen[0]} == {0, 1}


def test_the_papers_action_never_picks_the_noop_and_changes_the_residual_at_every_steered_token(tiny):
    """noop=False: every hook call at every generated token adds coef * W_dec[a] with a a feature (< d_sae), also
    at a layer whose SAE finds no feature active (the topped-up mask)."""
    model, _, saes = tiny
    layer_saes = {0: saes[0], 1: _silent_sae(1, seed=2)}
    pol = control.new_policy(_cfg(layers=(0, 1), mask="active", coef=5.0), layer_saes, model)
    for head in pol.heads.values():
        torch.nn.init.normal_(head[-1].weight)
    seen = []

    def record(resid, hook):
        seen.append(resid[:, -1].detach().clone())

    trace = control.Trace()
    hooks = control.policy_hooks(pol, layer_saes, greedy=False, trace=trace, generator=torch.Generator().manual_seed(0))
    prompts = ["reason : 1 + 2 + 3 =", "reason : 4 + 5 + 6 ="]
    g = rl.generate(model, prompts, 5, hooks + [(control.hook_name(l), record) for l in (0, 1)])
    assert len(trace.steps) == len(seen) == 2 * len(g.calls) and len(g.calls) > 1
    for step, after in zip(trace.steps, seen):
        acts = step["action"].actions
        assert (acts < 16).all() and step["cand"].shape[1] == 16
        W = layer_saes[step["layer"]].W_dec.detach()
        torch.testing.assert_close(after - step["x"], 5.0 * W[acts[:, 0]])
        assert ((after - step["x"]).norm(dim=-1) > 1.0).all()  # unit-norm decoder rows x 5


@pytest.mark.parametrize("noop", [False, True])
def test_checkpoint_round_trip_and_refusals(tiny, tmp_path, noop):
    model, _, saes = tiny
    pol = control.new_policy(_cfg(layers=(0, 1), noop=noop), saes, model)
    torch.nn.init.normal_(pol.heads["0"][-1].weight)
    control.save_policy(pol, tmp_path / "p", note="test")
    back = control.load_policy(tmp_path / "p", sae=saes, model=model, noop=noop)
    assert back.cfg.noop is noop  # the action space comes from cfg.json
    x = torch.randn(4, 32)
    cand = control.candidates(saes[0], x, "all", noop)
    torch.testing.assert_close(back.logits(0, x, cand), pol.logits(0, x, cand))
    with pytest.raises(ValueError, match=f"trained with noop={noop}.*asks for noop={not noop}"):
        control.load_policy(tmp_path / "p", noop=not noop)
    cfg_json = tmp_path / "p" / "cfg.json"
    original = cfg_json.read_text()
    spec = json.loads(original)
    spec["config"]["noop"] = not noop  # a cfg.json that lies about the action space
    cfg_json.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="does not fit its cfg.json"):
        control.load_policy(tmp_path / "p")
    del spec["config"]["noop"]  # an old cfg.json, from before the paper-action default
    cfg_json.write_text(json.dumps(spec))
    if noop:
        with pytest.raises(ValueError, match="add \"noop\": true"):
            control.load_policy(tmp_path / "p")
    else:
        assert control.load_policy(tmp_path / "p").cfg.noop is False
    cfg_json.write_text(original)
    with pytest.raises(ValueError, match="another SAE for layer 1"):
        control.load_policy(tmp_path / "p", sae={0: saes[0], 1: tiny_sae(1, seed=9)})
    other, _ = tiny_model(tmp_path / "other", seed=3)
    with pytest.raises(ValueError, match="another model"):
        control.load_policy(tmp_path / "p", model=other)
    with pytest.raises(ValueError, match="pass saes as a dict"):
        control.load_policy(tmp_path / "p", sae=saes[0])
    with pytest.raises(ValueError, match="not a control-policy folder"):
        control.load_policy(tmp_path)


def test_the_batched_fixed_feature_search_equals_one_candidate_at_a_time(tiny):
    """All candidates in a few batched generations (each row steered by its own candidate) give the completions
    and accuracies of one generate call per candidate with control.feature_hooks, on prompts of several lengths."""
    model, world, saes = tiny
    rng = __import__("random").Random(3)
    examples = [world.mcqa(rng) for _ in range(6)] + [world.closed_book(rng) for _ in range(6)]
    assert len({len(e.prompt.split()) for e in examples}) > 1
    feats = [0, 3, 5, 9, 15]
    one = {f: rl_eval.answers(model, examples, fwd_hooks=control.feature_hooks(saes[1], 1, f, 5.0)) for f in feats}
    ref = {f: rl_eval.accuracy_and_answers(examples, one[f])[0] for f in feats}
    assert len({tuple(v) for v in one.values()}) > 1  # the candidates steer differently: the test can fail
    for max_floats in (2 ** 28, 1):  # every candidate in one batch per length, and one candidate per call
        seen = []
        record = lambda e, c: seen.append(c) or rl_eval.score(e, c)
        best, accs = rl_eval.search_fixed_feature(model, saes[1], 1, examples, 5.0, feats, record, max_floats)
        assert seen == [c for f in feats for c in one[f]]  # scored in candidate order, prompt order
        assert accs == ref and best == max(ref, key=ref.get)


def test_oracle_accuracy_is_the_share_any_candidate_answers_and_bounds_the_best_fixed_feature(tiny):
    """The oracle counts a prompt when at least one candidate answers it; so it is at least every candidate's
    accuracy, and per prompt it is the OR of the candidates' correctness computed one candidate at a time."""
    model, world, saes = tiny
    rng = __import__("random").Random(3)
    examples = [world.mcqa(rng) for _ in range(6)] + [world.closed_book(rng) for _ in range(6)]
    feats = [0, 3, 5, 9, 15]
    one = {f: rl_eval.answers(model, examples, fwd_hooks=control.feature_hooks(saes[1], 1, f, 5.0)) for f in feats}
    ok = [[rl_eval.score(e, c) > 0 for e, c in zip(examples, one[f])] for f in feats]
    want = sum(any(col) for col in zip(*ok)) / len(examples)
    oracle = rl_eval.oracle_accuracy(model, saes[1], 1, examples, 5.0, feats)
    assert oracle == pytest.approx(want)
    _, accs = rl_eval.search_fixed_feature(model, saes[1], 1, examples, 5.0, feats)
    assert oracle >= max(accs.values())
    assert rl_eval.oracle_accuracy(model, saes[1], 1, examples, 5.0, feats[:1]) == pytest.approx(accs[0])


def test_an_override_replaces_one_tokens_choice_and_nothing_before_it(tiny):
    """override(layer, call, actions) swaps the feature of one call of one layer: that call adds the forced decoder
    row, the calls before it are the unforced run's."""
    model, _, saes = tiny
    pol = control.new_policy(_cfg(layers=(0, 1), mask="all", coef=5.0), saes, model)
    torch.nn.init.normal_(pol.heads["1"][-1].weight)
    prompts = ["reason : 1 + 2 + 3 ="]
    plain, forced = control.Trace(), control.Trace()
    rl.generate(model, prompts, 4, control.policy_hooks(pol, saes, trace=plain))
    free_choice = int(plain.steps[2 * 2 + 1]["action"].actions[0, 0])  # call 2 of layer 1 (layer order 0, 1)
    f = (free_choice + 1) % 16
    swap = lambda layer, call, actions: torch.tensor([[f]]) if (layer, call) == (1, 2) else None
    rl.generate(model, prompts, 4, control.policy_hooks(pol, saes, trace=forced, override=swap))
    assert int(forced.steps[5]["action"].actions[0, 0]) == f != free_choice
    for a, b in zip(plain.steps[:5], forced.steps[:5]):  # steps 0, 1 and layer 0 of step 2: untouched
        assert torch.equal(a["action"].actions, b["action"].actions)
        torch.testing.assert_close(a["x"], b["x"])


def _parity_reward(example, completion):  # a reward that the feature choice moves on a random tiny model
    return float(sum(map(ord, completion)) % 2 == 0)


def test_branch_points_equal_replaying_each_swap_alone(tiny):
    """Every row's flips equal separate one-prompt replays with that token's choice swapped (the policy greedy
    elsewhere); the reference replay reproduces the greedy episode; with coef 0 no choice matters: no branch point."""
    import dataclasses

    model, world, saes = tiny
    rng = __import__("random").Random(0)
    examples = [dataclasses.replace(world.reasoning(rng), max_new_tokens=6) for _ in range(3)]
    pol = control.new_policy(_cfg(layers=(1,), mask="all", coef=50.0), saes, model)
    torch.nn.init.normal_(pol.heads["1"][-1].weight)
    pts = rl_eval.branch_points(model, pol, saes, examples, _parity_reward, n_alternatives=2)
    trace = rl_eval.episode_trace(model, pol, saes, examples, _parity_reward)
    assert len(pts) == len(trace) > len(examples)  # several generated tokens per episode
    assert (pts.n_tried == 3).all()  # two next-ranked features and no steering
    assert (pts.correct_replay == pts.correct).all()
    states = [_states(model, pol, saes, e) for e in examples]
    for _, row in pts.iterrows():
        e = examples[row.example]
        logits = pol.logits(1, *states[row.example][row.step])[0]
        ranked = [int(f) for f in logits.argsort(descending=True) if int(f) != row.feature][:2]
        flips = 0
        for alt in ranked + [16]:
            swap = lambda layer, call, a, alt=alt, step=row.step: torch.tensor([[alt]]) if call == step else None
            c = rl.generate(model, [e.prompt], rl.tokens_for([e]), control.policy_hooks(pol, saes, override=swap))
            flips += bool(_parity_reward(e, c.completions[0]) > 0) != bool(row.correct)
        assert row.n_flips == flips
    assert pts.branch.any() and not pts.branch.all()  # the comparison above is not vacuous
    still = control.new_policy(_cfg(layers=(1,), mask="all", coef=0.0), saes, model)
    torch.nn.init.normal_(still.heads["1"][-1].weight)
    assert not rl_eval.branch_points(model, still, saes, examples, _parity_reward, 2).branch.any()
    summary = rl_eval.branch_summary(pts)
    assert summary.tokens.sum() == len(pts) and summary.branch_share.between(0, 1).all()


def _states(model, pol, saes, example):
    """The (x, cand) the greedy policy saw at each step of its one-layer episode on ``example``."""
    trace = control.Trace()
    rl.generate(model, [example.prompt], rl.tokens_for([example]), control.policy_hooks(pol, saes, trace=trace))
    return [(s["x"], s["cand"]) for s in trace.steps]


def test_critic_trajectories_split_values_by_outcome():
    import pandas as pd

    trace = pd.DataFrame({"example": [0, 0, 1, 1, 2], "step": [0, 1, 0, 1, 0], "layer": [3] * 5,
                          "value": [0.9, 0.8, 0.1, 0.3, 0.5], "correct": [True, True, False, False, False]})
    t = rl_eval.critic_trajectories(trace).set_index("step")
    assert t.loc[0, "value_correct"] == pytest.approx(0.9) and t.loc[0, "value_wrong"] == pytest.approx(0.3)
    assert t.loc[0, "gap"] == pytest.approx(0.6) and t.loc[0, "value_auroc"] == pytest.approx(1.0)
    assert (t.loc[0, "n_correct"], t.loc[0, "n_wrong"]) == (1, 2)
    assert t.loc[1, "value_auroc"] == pytest.approx(1.0) and t.loc[1, "gap"] == pytest.approx(0.5)
