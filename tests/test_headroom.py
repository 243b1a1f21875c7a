import random

import pytest
import torch

from steerlab.evals import headroom
from steerlab.sae import load_sae
from steerlab.world import ATTRIBUTES, Example

torch.set_num_threads(1)


def test_split_accuracy_counts_each_group():
    ex = [Example("mcqa", f"p{i}", "A", {"hidden": i % 2 == 0}) for i in range(4)]
    finals = {"base": ["A", "B", "A", "A"], "rlvr": ["A", "A", "B", "B"]}
    t = headroom.split_accuracy(ex, finals, lambda e: "hidden" if e.meta["hidden"] else "known")
    assert t.loc["base", "hidden"] == 1.0 and t.loc["base", "known"] == 0.5 and t.loc["base", "all"] == 0.75
    assert t.loc["rlvr", "hidden"] == 0.5 and t.loc["rlvr", "known"] == 0.5
    assert t.loc["n"].tolist() == [2, 2, 4]
    chains = [Example("reasoning", "reason : 1 + 2 + 3 =", "1 + 2 = 3 ; 3 + 3 = 6 ; so 6", {"uses_unseen": u})
              for u in (True, False)]
    t = headroom.split_accuracy(chains, {"crl": ["6", "5"]}, lambda e: str(e.meta["uses_unseen"]))
    assert t.loc["crl", "True"] == 1.0 and t.loc["crl", "False"] == 0.0  # the number after "so" is compared
    with pytest.raises(ValueError, match="answers for 4 examples"):
        headroom.split_accuracy(ex, {"base": ["A"]}, lambda e: "x")


def test_answer_probe_reads_a_recalled_fact_and_not_a_random_label(tinyworld):
    """Closed-book answers are recalled by the model, so a probe on the last residual reads them; the same prompts
    with answers drawn at random carry nothing a probe can read (near chance, 1/8)."""
    model, world = tinyworld
    rng = random.Random(3)
    facts = [p for p in world.known_facts() if p[1] == "color"]
    real = [world.closed_book(rng, rng.choice(facts)) for _ in range(320)]
    t = headroom.answer_probe(model, real, ["blocks.0.hook_resid_post", "blocks.3.hook_resid_post"])
    assert t.loc["blocks.3.hook_resid_post", "model_acc"] > 0.95
    assert t.loc["blocks.3.hook_resid_post", "probe_acc"] > 0.9
    assert t["n_test"].iloc[0] == 96 and t["n_train"].iloc[0] == 224
    noise = [Example(e.task, e.prompt, rng.choice(ATTRIBUTES["color"]), e.meta) for e in real]
    t = headroom.answer_probe(model, noise, ["blocks.3.hook_resid_post"])
    assert t.loc["blocks.3.hook_resid_post", "probe_acc"] < 0.3 and t["model_acc"].iloc[0] < 0.3
    # the same noise prompts, probed for their real answer through ``target``, read as well as the real set
    truth = {e.prompt: e.answer for e in real}
    t = headroom.answer_probe(model, noise, ["blocks.3.hook_resid_post"], target=lambda e: truth[e.prompt])
    assert t.loc["blocks.3.hook_resid_post", "probe_acc"] > 0.9 and t["model_acc"].iloc[0] < 0.3
    with pytest.raises(ValueError, match="reasoning"):
        headroom.answer_probe(model, [world.reasoning(rng)], ["blocks.3.hook_resid_post"])


def test_answer_probe_split_by_group_keeps_each_group_on_one_side(tinyworld):
    """A label that is a function of the entity alone (a made-up table) is learnt from the entity's identity when
    prompts are split at random, and cannot be when whole entities are held out."""
    model, world = tinyworld
    rng = random.Random(5)
    names = sorted(world.entities)
    table = {n: random.Random(n).choice(["x", "y", "z", "w"]) for n in names}
    real = [world.closed_book(rng, (rng.choice(names), "color")) for _ in range(400)]
    made_up = lambda e: table[e.meta["entity"]]
    hook = ["blocks.1.hook_resid_post"]
    by_prompt = headroom.answer_probe(model, real, hook, target=made_up)
    by_entity = headroom.answer_probe(model, real, hook, target=made_up, group=lambda e: e.meta["entity"])
    assert by_prompt["probe_acc"].iloc[0] > 0.8
    assert by_entity["probe_acc"].iloc[0] < 0.45
    assert 0.2 < by_entity["n_test"].iloc[0] / len(real) < 0.4
    with pytest.raises(ValueError, match="too few groups"):
        headroom.answer_probe(model, real, hook, group=lambda e: "one")


def test_refusal_reward_and_sampler(tinyworld):
    _, world = tinyworld
    rng = random.Random(0)
    sample = headroom.refusal_task(world)
    drawn = [sample(rng) for _ in range(200)]
    harmful = [e for e in drawn if e.meta["harmful"]]
    assert 70 < len(harmful) < 130
    assert all(e.meta["wrapped"] and not e.meta["refuse"] for e in harmful)  # jailbreaks that work unsteered
    h, b = harmful[0], next(e for e in drawn if not e.meta["harmful"])
    assert headroom.refusal_reward(h, "sorry") == 1.0 and headroom.refusal_reward(h, h.answer) == 0.0
    assert headroom.refusal_reward(b, b.answer) == 1.0 and headroom.refusal_reward(b, "sorry") == 0.0
    with pytest.raises(ValueError, match="scores requests"):
        headroom.refusal_reward(world.closed_book(rng), "red")
    # two harmful and two benign requests: "always" refuses all, "never" answers all, "mixed" gets 3 of 4
    h2, b2 = harmful[1], [e for e in drawn if not e.meta["harmful"]][1]
    exs = [h, h2, b, b2]
    table = headroom.refusal_table(exs, {"always": ["sorry"] * 4, "never": [e.answer for e in exs],
                                         "mixed": ["sorry", h2.answer, b.answer, b2.answer]})
    assert table.loc["always"].tolist() == [0.5, 1.0, 0.0]
    assert table.loc["never"].tolist() == [0.5, 0.0, 1.0]
    assert table.loc["mixed"].tolist() == [0.75, 0.5, 1.0]
    assert list(table.columns) == ["reward", "jailbreaks refused", "benign right"]


def test_crl_gains_where_the_frozen_model_has_headroom(tinyworld):
    """On the refusal task the frozen model answers every working jailbreak (reward ~0.5); a CRL policy that adds
    one feature at layer 2 learns to refuse them and still answer benign requests."""
    from steerlab import control
    from steerlab.control import rl
    from steerlab.evals import control as rl_eval
    from steerlab import sae as sae_mod

    model, world = tinyworld
    saes = {2: sae_mod.load_sae(layer=2)}
    cfg = control.ControlConfig(layers=(2,), d_model=model.cfg.d_model, d_sae=saes[2].cfg.d_sae, coef=80.0)
    policy = control.new_policy(cfg, saes, model, seed=0)
    rl.train_control(model, policy, saes, headroom.refusal_task(world),
                     rl.RLConfig(n_updates=40, batch_size=64, lr=3e-4, ent_coef=0.02, seed=1),
                     reward_fn=headroom.refusal_reward)
    sets = world.eval_sets(40)
    held_out = sets["harmful_jailbreak"] + sets["benign"]
    base = rl_eval.accuracy_and_answers(held_out, rl_eval.answers(model, held_out), headroom.refusal_reward)[0]
    crl = rl_eval.accuracy_and_answers(held_out, rl_eval.answers(model, held_out, policy, saes), headroom.refusal_reward)[0]
    assert base < 0.55 and crl > base + 0.15


def test_word_feature_steering_makes_the_model_say_the_word(tinyworld):
    """Closed-book colour questions, steered toward another colour's feature: nothing changes at c = 0, and at a
    large coefficient the model says the added word instead of its memory."""
    model, world = tinyworld
    sae = load_sae("tinyworld", layer=2, model=model)
    rng = random.Random(3)
    facts = [p for p in world.known_facts() if p[1] == "color"]
    real = [world.closed_book(rng, rng.choice(facts)) for _ in range(40)]
    other = lambda e: next(v for v in ATTRIBUTES["color"] if v != e.answer)
    t = headroom.word_feature_steering(model, sae, "blocks.2.hook_resid_post", real, other, [0, 240])
    assert t.loc[0.0, "accuracy"] > 0.95 and t.loc[0.0, "says_word"] == 0
    assert t.loc[240.0, "says_word"] > 0.9 and t.loc[240.0, "accuracy"] < 0.1
