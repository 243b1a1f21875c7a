import pandas as pd
import pytest
import torch

from steerlab import sae as sae_mod
from steerlab.core import run as evaluate
from steerlab.core import hooks
from steerlab.evals import steering
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
    rates = steering.request_rates(model, harm, ben, hooks.amplify(HOOK, sae, [0, 1], 0.0))
    assert rates == steering.request_rates(model, harm, ben)  # alpha 0 changes nothing
    df = steering.defence_sweep(model, HOOK, sae, [0, 1], [50.0], [50.0], harm, ben, reads=("encoder", "code"))
    assert list(df.method) == ["none", "amplify", "calibrate", "amplify", "calibrate"]
    assert list(df.read) == ["", "encoder", "encoder", "code", "code"] and df.asr.between(0, 1).all()


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
