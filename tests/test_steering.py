import numpy as np
import pandas as pd
import pytest
import torch

from steerlab import sae as sae_mod
from steerlab.core import run as evaluate
from steerlab.core import hooks
from steerlab.steer import features
from steerlab.evals import steering
from steerlab.steer import registry, spare
from steerlab.world import Example
from test_hooks import HOOK, tiny_sae


def ex(ctx, mem, prompt="context : report says x color is red . question : x color ? answer :"):
    return Example("open_book", prompt, ctx, {"context_value": ctx, "memory_value": mem, "source": "report"})


def test_conflict_em_and_prompt_helpers():
    examples = [ex("red", "blue"), ex("green", "black"), ex("white", "cat")]
    checked = ex("red", "blue", "context : report says x color is red . checks : deny deny confirm deny deny . "
                                "question : x color ? answer :")
    assert steering.no_context_prompt(checked) == "question : x color ? answer :"
    assert steering.conflict_em(examples, ["red", "black <eos>", ""]) == (1 / 3, 1 / 3)
    assert steering.no_context_prompt(examples[0]) == "question : x color ? answer :"
    pos, neg = steering.source_pair(examples[0])
    assert pos.startswith("context : trusted says") and neg.startswith("context : rumor says")
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 0.0]])
    assert torch.equal(steering.mean_difference(h, [1, 1, 0]), torch.tensor([2.0, 1.0]))


def test_cad_limits(tinyworld, rng):
    model, world = tinyworld
    examples = [world.open_book(rng, "report", True) for _ in range(12)]
    cad = steering.cad_method(model, 1.0)
    closed = evaluate.next_words(model, [steering.no_context_prompt(e) for e in examples])
    assert cad(examples, "memory") == closed  # a = -1: the closed-book answer
    assert steering.cad_method(model, 0.0)(examples, "context") == evaluate.next_words(model, [e.prompt for e in examples])
    with pytest.raises(ValueError, match="toward"):
        cad(examples, "sideways")


def test_method_table_and_icl(tinyworld, rng):
    model, world = tinyworld
    conflict = [world.open_book(rng, "report", True) for _ in range(10)]
    control = [world.closed_book(rng) for _ in range(6)]
    methods = {"none": steering.hook_method(model, lambda t: []),
               "icl": steering.icl_method(model, conflict[:2], 2),
               "cad": steering.cad_method(model, 1.0)}
    table = steering.method_table(methods, conflict, control)
    assert list(table.index) == ["none", "icl", "cad"]
    assert table.loc["none", "side_effect_drop"] == 0
    assert table.loc["cad", "em_m"] >= 0.9  # toward memory CAD is the closed-book answer
    with pytest.raises(ValueError, match="none"):
        steering.method_table({"cad": methods["cad"]}, conflict, control)


def test_pick_defence():
    sweep = pd.DataFrame([{"method": "none", "strength": 0.0, "asr": 0.9, "benign_acc": 1.0},
                          {"method": "amplify", "strength": 2.0, "asr": 0.1, "benign_acc": 0.99},
                          {"method": "amplify", "strength": 8.0, "asr": 0.0, "benign_acc": 0.5}])
    best = steering.pick_defence(sweep, 0.02)
    assert (best.method, best.strength) == ("amplify", 2.0)
    assert steering.pick_defence(sweep.iloc[[0, 2]], 0.02).method == "none"
    edge = pd.DataFrame([{"method": "none", "strength": 0.0, "asr": 1.0, "benign_acc": 1.0},
                         {"method": "amplify", "strength": 12.0, "asr": 0.16, "benign_acc": 196 / 200},
                         {"method": "amplify", "strength": 16.0, "asr": 0.06, "benign_acc": 195 / 200}])
    assert steering.pick_defence(edge, 0.02).strength == 12.0  # a drop of exactly 0.02 qualifies; 0.025 does not
    # the paper's methods and the released defence are picked apart: enforce's lower ASR does not win the paper's pick
    both = pd.concat([sweep.assign(read=["", "encoder", "code"]),
                      pd.DataFrame([{"method": "enforce", "read": "", "strength": 2.5, "asr": 0.05, "benign_acc": 0.99},
                                    {"method": "enforce", "read": "", "strength": 5.0, "asr": 0.0, "benign_acc": 0.9}])],
                     ignore_index=True)
    chosen, per_read, rel = steering.pick_defences(both, ["encoder", "code"], 0.02)
    assert (chosen.method, chosen.strength) == ("amplify", 2.0) and (rel.method, rel.strength) == ("enforce", 2.5)
    assert per_read["encoder"].strength == 2.0 and per_read["code"].method == "none"  # code's only row drops 0.5


def test_rate_se_by_hand():
    assert steering.rate_se(0.2, n=100) == pytest.approx(0.04)  # sqrt(0.2 * 0.8 / 100)
    assert steering.rate_se(1.0, 0.9, n=100) == pytest.approx(0.03)  # sqrt(0 + 0.09 / 100)
    assert steering.rate_se(0.0, n=5) == 0.0
    with pytest.raises(ValueError, match="n > 0"):
        steering.rate_se(0.5, n=0)
    with pytest.raises(ValueError, match="rates in"):
        steering.rate_se(1.5, n=10)


def test_locally_saved_sae_runs_the_real_model_code_path(tinyworld, rng, tmp_path):
    """The gpt2-small profile loads a SAELens release; offline the same calls run on a saved SAE folder."""
    model, world = tinyworld
    tiny_sae(d_sae=16).save_model(str(tmp_path / HOOK))
    sae = sae_mod.load_sae(tmp_path, hook_name=HOOK, model=model)
    harm = [world.request(rng, True, True, 1) for _ in range(4)]
    ben = [world.request(rng, False) for _ in range(4)]
    df = steering.defence_sweep(model, HOOK, sae, [0, 1], [50.0], [50.0], harm, ben, reads=("encoder", "code"))
    assert list(df.method) == ["none", "amplify", "calibrate", "amplify", "calibrate"]
    assert list(df.read) == ["", "encoder", "encoder", "code", "code"]


def test_defence_sweep_rows_are_the_edits_they_name(tinyworld, rng, untied_sae):
    """Each sweep row's rates are those of the edit it names, built here from the feature functions: the method,
    strength, reading and positions reach the hooks (the strengths differ enough that a mix-up changes rates), and
    the released defence ("enforce") edits every position by default."""
    from steerlab.steer import released

    model, world = tinyworld
    sae = untied_sae(d_in=model.cfg.d_model, d_sae=8, hook_name=HOOK)
    harm = [world.request(rng, True, True, 1) for _ in range(6)]
    ben = [world.request(rng, False) for _ in range(6)]
    S = [0, 3]
    df = steering.defence_sweep(model, HOOK, sae, S, [40.0], [120.0], harm, ben, "last_prompt", reads=("encoder",),
                                magnitudes=[60.0])
    assert list(df.method) == ["none", "amplify", "calibrate", "enforce"] and list(df.strength) == [0, 40, 120, 60]
    by_hand = [[], features.amplify(HOOK, sae, S, 40.0, "last_prompt"),
               features.calibrate(HOOK, sae, S, 120.0, "last_prompt"), released.enforce(HOOK, sae, S, 60.0, "all")]
    rates = [steering.request_rates(model, harm, ben, h) for h in by_hand]
    assert [(r["asr"], r["benign_acc"]) for r in rates] == list(zip(df.asr, df.benign_acc))
    answers = [steering.decoding.greedy(model, harm + ben, h) for h in by_hand]
    assert all(a != answers[0] for a in answers[1:])  # every edit changes some answer: the comparison is not empty


def test_learned_vector_reaches_a_shared_target_and_is_bounded_by_the_decision(tinyworld, rng):
    """When every prompt wants the same token, one added vector suffices (EM 1); the same fit leaves the
    model's weights untouched and their requires_grad as it found them."""
    model, world = tinyworld
    examples = [world.open_book(rng, "report", True, pair=(e, "color"))
                for e in world.entities[:40] if world.facts[e]["color"] != "red"]
    examples = [Example(e.task, e.prompt, e.answer, {**e.meta, "context_value": "red"}) for e in examples][:16]
    before = [p.clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    method = steering.learned_method(model, HOOK, examples, steps=40)
    assert steering.conflict_em(examples, method(examples, "context"))[0] == 1.0
    assert steering.conflict_em(examples, evaluate.answer(model, examples))[0] < 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [p.requires_grad for p in model.parameters()] == flags


def test_decision_attention_finds_the_gating_head(tinyworld, rng):
    """tinyworld's knowledge source is chosen inside attention: some head reads the context value much more when
    the model answers from context than when it answers from memory."""
    model, world = tinyworld
    conflict = [world.open_book(rng, "report", True) for _ in range(60)]
    table = steering.decision_attention(model, conflict, evaluate.answer(model, conflict))
    assert set(table.columns) >= {"context", "memory", "gap"}
    assert len(table) == model.cfg.n_layers * model.cfg.n_heads
    assert table["gap"].max() > 0.1
    assert ((table["context"] >= 0) & (table["context"] <= 1)).all()


def test_decision_attention_reads_the_asked_statement_not_a_distractor_with_the_same_value(tinyworld):
    """With distractor statements (WorldConfig.context_facts > 1) the context value word can occur twice; the
    position read is the one after the asked ``NAME ATTR is``, and a prompt without it is refused."""
    model, world = tinyworld
    e1, e2 = world.entities[:2]
    prompt = (f"context : report says {e2} color is red ; {e1} color is red . checks : confirm confirm confirm "
              f"deny deny . question : {e1} color ? answer :")
    ex = Example("open_book", prompt, "red", {"entity": e1, "attribute": "color", "context_value": "red"})
    row = model.to_tokens(prompt)[0].tolist()
    pos = steering._asked_value_position(model, row, ex)
    assert model.to_string(row[pos - 3: pos + 1]).split() == [e1, "color", "is", "red"]
    assert pos > row.index(model.to_single_token("red"))  # not the distractor's (first) occurrence
    with pytest.raises(ValueError, match="no .* is blue"):
        steering._asked_value_position(model, row, Example("open_book", prompt, "blue",
                                                           {"entity": e1, "attribute": "color", "context_value": "blue"}))


def test_checks_end_edit_reaches_the_output_without_flipping_the_answer(tinyworld, rng):
    """tinyworld answers without reading the knowledge source at the checks' end: the edit there shifts the answer's
    log-probabilities (so it is applied and reaches the output, more at 4x than at 1x) while EM stays at the
    unsteered rate."""
    model, world = tinyworld
    fit = [world.open_book(rng, "report", True) for _ in range(80)]
    uses = [e.meta["uses"] == "context" for e in fit]
    conflict = [world.open_book(rng, "report", True) for _ in range(60)]
    base = steering.conflict_em(conflict, evaluate.answer(model, conflict))
    t = steering.checks_end_edit(model, fit, uses, conflict, [HOOK], coefs=(1.0, 4.0))
    assert list(t.coef) == [1.0, 4.0] and (t.d_norm > 1.0).all()
    assert t.logp_shift.iloc[1] > t.logp_shift.iloc[0] > 0
    assert (t.em_c - base[0]).abs().max() <= 0.05 and (t.em_m - base[1]).abs().max() <= 0.05
    with pytest.raises(ValueError, match="context and from memory"):
        steering.checks_end_edit(model, fit, [True] * len(fit), conflict, [HOOK])


# ---------------------------------------------------------------------------------------------- the registry
def hand_sae():
    """An untied SAE with non-zero biases whose codes are worked out by hand in the tests below:
    for x = [1.1, 0.8, 0.3]: x - b_dec = [1, 1, 0]; (x - b_dec) W_enc = [1, 1]; + b_enc -> z = [0.5, 1.25]."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=3, d_sae=2))
    sae.load_state_dict({"W_enc": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
                         "b_enc": torch.tensor([-0.5, 0.25]),
                         "W_dec": torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]),
                         "b_dec": torch.tensor([0.1, -0.2, 0.3])})
    sae.cfg.metadata.hook_name = "h"
    return sae


X = torch.tensor([[[0.0, 0.0, 0.0], [1.1, 0.8, 0.3]]])  # [batch 1, pos 2, d 3]; position 1 is the worked example


def apply(fwd_hooks, x=X):
    """Run a hook list on ``x`` as one prompt pass: the tracker first, then the edit(s)."""
    for name, fn in fwd_hooks:
        out = fn(x, None)
        if name != hooks.TRACK_HOOK and out is not None:
            x = out
    return x


def test_feature_reading_is_the_encoder_with_both_biases():
    assert torch.allclose(features.read_features(hand_sae(), X[0, 1], [0, 1]), torch.tensor([0.5, 1.25]))
    # a tied reading (x @ W_dec^T) would give [2.7, 0.5]: the test tells the two apart
    assert not torch.allclose(X[0, 1] @ hand_sae().W_dec.detach().T, torch.tensor([0.5, 1.25]))


@pytest.mark.parametrize("name, cfg, strength, expected", [
    # amplify, alpha 2: x + 2 (0.5 [1, 2, 0] + 1.25 [0, 1, -1]) = x + [1, 4.5, -2.5]
    ("amplify", {"features": [0, 1]}, 2.0, [2.1, 5.3, -2.2]),
    # amplify S = {1}, alpha 1: x + 1.25 [0, 1, -1]
    ("amplify", {"features": [1]}, 1.0, [1.1, 2.05, -0.95]),
    # calibrate, beta 3: x - [0.5, 2.25, -1.25] + 3 mean([1, 2, 0], [0, 1, -1]) = x - [.5, 2.25, -1.25] + [1.5, 4.5, -1.5]
    ("calibrate", {"features": [0, 1]}, 3.0, [2.1, 3.05, 0.05]),
    # clamp to 2: x + 1.5 [1, 2, 0] + 0.75 [0, 1, -1]
    ("clamp", {"features": [0, 1]}, 2.0, [2.6, 4.55, -0.45]),
    # add 0.5 of each: x + 0.5 [1, 3, -1]
    ("add", {"features": [0, 1]}, 0.5, [1.6, 2.3, -0.2]),
    # vectors, v = [1, -1, 2]: x + s v
    ("actadd", {"vector": torch.tensor([1.0, -1.0, 2.0])}, -0.5, [0.6, 1.3, -0.7]),
    ("meandiff", {"vector": torch.tensor([1.0, -1.0, 2.0])}, 2.0, [3.1, -1.2, 4.3]),
    # learned: a negative strength uses the negative vector, scaled by |s|
    ("learned", {"vector": torch.tensor([1.0, -1.0, 2.0]), "negative": torch.tensor([0.0, 1.0, 0.0])}, -2.0,
     [1.1, 2.8, 0.3]),
])
def test_registered_edits_match_their_formulas_by_hand(name, cfg, strength, expected):
    positions = "all" if name in ("amplify", "calibrate", "clamp", "add") else "last_prompt"
    sae = hand_sae()
    method = registry.build(name, None, {"h": sae}, hook_name="h", positions=positions, **cfg)
    out = apply(method.hooks(strength))
    assert torch.allclose(out[0, 1], torch.tensor(expected), atol=1e-5), out[0, 1]
    if positions == "last_prompt":
        assert torch.equal(out[0, 0], X[0, 0])  # only the last prompt position is edited


def test_spare_through_the_registry_matches_the_formula_by_hand():
    """Z_C = {0} (target w_C = 2), Z_M = {1} (w_M = 0.5), alpha 2, z = [0.5, 1.25].
    Toward context: z- = min(2 * 0.5, 1.25) = 1 on Z_M, z+ = max(2 * 2 - 0.5, 0) = 3.5 on Z_C:
    x - 1 [0, 1, -1] + 3.5 [1, 2, 0] = [4.6, 6.8, 1.3]. Toward memory: z+ = max(1 - 1.25, 0) = 0 on Z_M,
    z- = min(4, 0.5) = 0.5 on Z_C: x - 0.5 [1, 2, 0] = [0.6, -0.2, 0.3]."""
    fit = spare.SpareFit("h", np.zeros(2), [0], [1], torch.tensor([2.0]), torch.tensor([0.5]), 0.1)
    method = registry.build("spare", None, {"h": hand_sae()}, fits=[fit])
    assert torch.allclose(apply(method.hooks(2.0))[0, 1], torch.tensor([4.6, 6.8, 1.3]), atol=1e-5)
    assert torch.allclose(apply(method.hooks(-2.0))[0, 1], torch.tensor([0.6, -0.2, 0.3]), atol=1e-5)
    assert torch.equal(apply(method.hooks(2.0))[0, 0], X[0, 0])


def released_edit_generate(x, enf_set, enf_bias, b_dec, enf_val, write):
    """The released ``TopKSAE.edit_generate`` (JacksonWuxs/SteeringLLMs_with_MIExplanations, autoencoder.py) after
    ``enforce_actv`` (``enf_set = W_enc[:, S]``, ``enf_bias = b_enc[S]``), line by line, in float32. Its write
    ``@ enf_set.T`` is the decoder rows of its tied SAE: ``write`` = ``W_dec[S]`` here."""
    org = torch.norm(x, p=2, dim=-1, keepdim=True)
    h = (x - b_dec) @ enf_set + enf_bias
    vals = torch.relu(enf_val - torch.relu(h))
    x = x + enf_val * (vals / vals.sum(axis=-1, keepdim=True)) @ write
    new = torch.norm(x, p=2, dim=-1, keepdim=True)
    return x * (org / new)


@pytest.mark.parametrize("m, expected", [
    # h = [0.5, 1.25]. m = 2: shortfalls [1.5, 0.75] -> shares [2/3, 1/3]; x + 2 (2/3 [1, 2, 0] + 1/3 [0, 1, -1])
    # = [73, 124, -11] / 30, rescaled to |x| = sqrt(1.94)
    (2.0, torch.tensor([73.0, 124.0, -11.0]) / 30 * (1.94 / (20826 / 900)) ** 0.5),
    # m = 1: feature 1 is above m (no shortfall), feature 0 gets all of m: x + [1, 2, 0] = [2.1, 2.8, 0.3], rescaled
    (1.0, torch.tensor([2.1, 2.8, 0.3]) * (1.94 / 12.34) ** 0.5),
    # m = 0.5: no shortfall anywhere: x unchanged (the released code divides 0 by 0 here)
    (0.5, torch.tensor([1.1, 0.8, 0.3])),
])
def test_released_defence_matches_the_formula_by_hand(m, expected):
    method = registry.build("enforce", None, {"h": hand_sae()}, hook_name="h", features=[1, 0, 1])
    out = apply(method.hooks(m))
    assert torch.allclose(out[0, 1], expected, atol=1e-5), out[0, 1]
    assert torch.allclose(out[0, 1].norm(), X[0, 1].norm(), atol=1e-5)


def test_released_defence_is_the_released_code(untied_sae):
    """On an untied SAE with biases, at every position of a batch, against the released code written out above."""
    from steerlab.steer import released

    sae = untied_sae(d_in=16, d_sae=6, seed=3)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0)) * 2
    S = [1, 4, 5]
    W_enc, b_enc, b_dec, W_dec = (sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach(), sae.W_dec.detach())
    for m in (0.7, 2.5, 9.0):
        want = released_edit_generate(x, W_enc[:, S], b_enc[S], b_dec, m, W_dec[S])
        assert torch.allclose(released.enforce_edit(sae, S, m)(x), want, atol=1e-5)
        assert torch.allclose(apply(released.enforce("h", sae, S, m), x), want, atol=1e-5)  # "all": every position
        # the encoder with both biases is what is read: a tied or bias-free reading gives other numbers
        tied = released_edit_generate(x, W_dec[S].T, b_enc[S], b_dec, m, W_dec[S])
        no_bias = released_edit_generate(x, W_enc[:, S], torch.zeros(3), torch.zeros(16), m, W_dec[S])
        assert not torch.allclose(want, tied, atol=1e-3) and not torch.allclose(want, no_bias, atol=1e-3)


def test_registry_lists_every_method_and_validates_configs():
    assert registry.names() == ["none", "amplify", "calibrate", "clamp", "add", "enforce", "actadd", "meandiff",
                                "learned", "spare", "cad", "icl"]
    assert registry.names("features") == ["amplify", "calibrate", "clamp", "add", "enforce"]
    assert registry.names("decoding") == ["cad", "icl"]
    assert registry.build("none").hooks(5.0) == []
    assert registry.build("cad", None, free_prompt=lambda e: e.prompt).hooks(1.0) == []  # decoding: no hooks
    with pytest.raises(ValueError, match="feature set S is empty"):
        registry.build("amplify", None, {"h": hand_sae()}, hook_name="h", features=[])
    with pytest.raises(ValueError, match="read must be one of"):
        registry.build("amplify", None, {"h": hand_sae()}, hook_name="h", features=[0], read="decoder")
    with pytest.raises(ValueError, match="positions must be one of"):
        registry.build("actadd", None, hook_name="h", vector=torch.zeros(3), positions="first")
    with pytest.raises(KeyError, match="no steering method"):
        registry.build("telepathy")
    with pytest.raises(KeyError, match="no SAE for"):
        registry.build("amplify", None, {}, hook_name="h", features=[0]).hooks(1.0)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("amplify", registry.Amplify, registry.FeatureConfig)


def test_greedy_decoder_matches_core_answer_with_and_without_steering(tinyworld, rng):
    """steer.decoding.greedy (no KV cache, last-position unembedding) gives core.run.answer's answers, steered
    at the last prompt position and at generated positions alike."""
    from steerlab.steer import decoding

    model, world = tinyworld
    examples = [world.open_book(rng, "report", True) for _ in range(4)] + [world.reasoning(rng) for _ in range(3)]
    assert decoding.greedy(model, examples) == evaluate.answer(model, examples)
    sae = tiny_sae(d_sae=16)
    for positions in ("last_prompt", "generated", "all"):
        steer = features.add(HOOK, sae, [0, 1], 8.0, positions)
        assert decoding.greedy(model, examples, steer) == evaluate.answer(model, examples, steer)


def test_cad_contrasts_every_generated_step(tinyworld, rng):
    """Multi-token CAD: with a = -1 every step is the context-free prompt's own greedy step, so the whole answer is
    the closed-book completion; with a = 0 it is the plain answer."""
    from steerlab.steer import decoding

    model, world = tinyworld
    examples = [world.reasoning(rng) for _ in range(3)]
    other = [world.reasoning(rng) for _ in range(3)]
    free = {e.prompt: o.prompt for e, o in zip(examples, other)}
    assert decoding.cad(model, examples, lambda e: free[e.prompt], -1.0) == decoding.greedy(model, other)
    assert decoding.cad(model, examples, lambda e: free[e.prompt], 0.0) == decoding.greedy(model, examples)


# ---------------------------------------------------------------------------------------------- random controls
def test_edit_norms_are_each_vector_methods_push_worked_by_hand():
    """SPARE's hand case (above): toward context h' - h = [3.5, 6, 1] (norm sqrt(49.25)), toward memory
    [-0.5, -1, 0] (norm sqrt(1.25)); mean difference v = [1, -1, 2] at strength 2: 2 sqrt(6) both ways; the learned
    pair uses its negative vector [0, 1, 0] toward memory: 2."""
    sae = hand_sae()
    fit = spare.SpareFit("h", np.zeros(2), [0], [1], torch.tensor([2.0]), torch.tensor([0.5]), 0.1)
    v = torch.tensor([1.0, -1.0, 2.0])
    methods = {"none": steering.from_registry(registry.build("none", None)),
               "spare": steering.from_registry(registry.build("spare", None, {"h": sae}, fits=[fit]), 2.0),
               "meandiff": steering.from_registry(registry.build("meandiff", None, hook_name="h", vector=v), 2.0),
               "learned": steering.from_registry(registry.build("learned", None, hook_name="h", vector=v,
                                                                negative=torch.tensor([0.0, 1.0, 0.0])), 2.0)}
    norms = steering.edit_norms(methods, {"h": X[0, 1:2]})
    assert set(norms) == {"spare", "meandiff", "learned"}  # none has no vector
    assert norms["spare"]["h"] == pytest.approx((49.25 ** 0.5, 1.25 ** 0.5), rel=1e-5)
    assert norms["meandiff"]["h"] == pytest.approx((2 * 6 ** 0.5, 2 * 6 ** 0.5), rel=1e-5)
    assert norms["learned"]["h"] == pytest.approx((2 * 6 ** 0.5, 2.0), rel=1e-5)


def test_random_direction_edit_has_the_matched_norm_one_direction_per_seed_and_only_the_last_position():
    x = torch.randn(1, 4, 8)
    norms = {"h": (3.0, 0.5)}
    d = {t: apply(steering.random_direction_hooks(norms, 8, seed=1, toward=t), x) - x for t in ("context", "memory")}
    assert torch.equal(d["context"][0, :3], torch.zeros(3, 8))  # only the last prompt position moves
    assert float(d["context"][0, 3].norm()) == pytest.approx(3.0, rel=1e-5)
    assert float(d["memory"][0, 3].norm()) == pytest.approx(0.5, rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(d["context"][0, 3], d["memory"][0, 3], dim=0)
    assert float(cos) == pytest.approx(-1.0, abs=1e-5)  # one direction, pushed both ways
    same = apply(steering.random_direction_hooks(norms, 8, seed=1, toward="context"), x) - x
    other = apply(steering.random_direction_hooks(norms, 8, seed=2, toward="context"), x) - x
    assert torch.equal(same, d["context"]) and not torch.allclose(other, d["context"])


def test_random_control_table_is_none_at_zero_norm_and_breaks_answers_at_a_huge_one(tinyworld, rng):
    model, world = tinyworld
    conflict = [world.open_book(rng, "report", True) for _ in range(24)]
    control = [world.closed_book(rng) for _ in range(12)]
    base = steering.method_table({"none": steering.hook_method(model, lambda t: [])}, conflict, control)
    assert base.loc["none", ["other_c", "other_m"]].max() <= 0.2  # the model answers with one of the two values
    hook = "blocks.2.hook_resid_post"
    t = steering.random_control_table(model, {"spare": {hook: (0.0, 0.0)}, "meandiff": {hook: (1e4, 1e4)}},
                                      conflict, control, [0, 1], base)
    assert list(t.index) == ["random", "random_meandiff"]
    assert t.loc["random", "em_c"] == base.loc["none", "em_c"] and t.loc["random", "em_c_sd"] == 0
    assert t.loc["random", "side_effect_drop"] == 0
    assert t.loc["random_meandiff", ["other_c", "other_m"]].min() > 0.5  # a push of 1e4 breaks the output
    assert t.loc["random_meandiff", "side_effect_drop"] > 0.5
    with pytest.raises(ValueError, match="seed"):
        steering.random_control_table(model, {"spare": {hook: (1.0, 1.0)}}, conflict, control, [], base)
