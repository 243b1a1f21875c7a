"""steerlab.rl: rollouts, PPO/GRPO, the probe task with a known answer, RLVR, baselines' helpers."""

import random

import pytest
import torch
from control_fixtures import tiny_model, tiny_sae

from steerlab import control
from steerlab.core import run as evaluate
from steerlab.control import rl
from steerlab.tasks import tinyworld as tinyworld_tasks
from steerlab.evals import control as rl_eval
from steerlab.world import Example


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, world = tiny_model(tmp_path_factory.mktemp("tiny"))
    return model, world


def _probe_sae(model, target: int, seed: int = 0):
    """An SAE at the last layer whose feature 11 is the (centred) unembedding direction of ``target``."""
    sae = tiny_sae(1, seed=seed)
    d = model.W_U[:, target].detach() - model.W_U.detach().mean(1)
    d = d - d.mean()
    with torch.no_grad():
        sae.W_dec[11] = d / d.norm()
    return sae


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_probe_policy_learns_the_feature_that_promotes_the_target(tiny, algo):
    """Reward "the next token is T": the policy must learn to pick the feature whose decoder most promotes T
    (direct logit effect W_dec[f] . W_U[:, T]) within 25 updates."""
    model, world = tiny
    torch.manual_seed(0)
    target_word = "purple"
    target = model.tokenizer.convert_tokens_to_ids(target_word)
    sae = _probe_sae(model, target)
    best = int((sae.W_dec.detach() @ model.W_U[:, target].detach()).argmax())
    assert best == 11  # the known answer
    rng = random.Random(0)
    pool = [world.closed_book(rng) for _ in range(8)]
    sampler = lambda r: r.choice(pool)  # noqa: E731
    reward = lambda ex, completion: float(completion.split()[:1] == [target_word])  # noqa: E731
    cfg = control.ControlConfig(layers=(1,), d_model=32, d_sae=16, d_hidden=32, mask="all", coef=30.0)
    pol = control.new_policy(cfg, sae, model)
    before = rl.rollout(model, pol, sae, pool, greedy=False, reward_fn=reward).rewards.mean()
    rcfg = rl.RLConfig(algo=algo, n_updates=25, batch_size=32, group_size=8, lr=1e-2, ent_coef=0.0, seed=0)
    res = rl.train_control(model, pol, sae, sampler, rcfg, reward_fn=reward)
    chosen = rl_eval.chosen_features(model, pol, sae, [e.prompt for e in pool])
    assert all(c[0]["features"] == [best] for c in chosen)
    assert rl.rollout(model, pol, sae, pool, greedy=True, reward_fn=reward).rewards.mean() == 1.0
    assert before < 0.5 and res.history["reward"][-1] > 0.8
    assert len(res.history["entropy"]) == 25 and res.choices and res.choices[0]["choices"][0]["layer"] == 1


def test_generate_matches_transformer_lens_generation(tiny):
    model, world = tiny
    prompts = [world.reasoning(random.Random(i)).prompt for i in range(3)] + ["question : x ? answer :"]
    ours = rl.generate(model, prompts, 5).completions
    assert ours == evaluate.complete(model, prompts, 5)


def _rotary(tokenizer):
    """A random 2-layer model with rotary positions (as Gemma), so prompts of any lengths share a left-padded batch."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=len(tokenizer),
                                  n_ctx=64, act_fn="gelu", normalization_type="RMS", positional_embedding_type="rotary",
                                  rotary_dim=8, seed=0, default_prepend_bos=True)
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def _steering_policy(model, sae, layer: int, coef: float):
    """A greedy-able policy whose choice depends on the state (random last layers; a fresh policy ties at 0)."""
    cfg = control.ControlConfig(layers=(layer,), d_model=model.cfg.d_model, d_sae=sae.cfg.d_sae, d_hidden=16,
                                mask="all", coef=coef)
    pol = control.new_policy(cfg, sae, model, seed=3)
    with torch.no_grad():
        for head in pol.heads.values():
            head[-1].weight.normal_(0, 1.0)
    return pol


def _per_episode(r: rl.Rollout) -> list[list[tuple]]:
    """Each episode's ``(step, layer, actions)`` in step order."""
    return [[(int(r.step[i]), int(r.layer[i]), r.actions[i].tolist()) for i in torch.nonzero(r.episode == ep)[:, 0]]
            for ep in range(len(r.examples))]


def _assert_batched_rollout_equals_one_prompt_rollouts(model, pol, sae, exs, n_tok):
    batched = rl.rollout(model, pol, sae, exs, greedy=True, max_new_tokens=n_tok)
    alone = [rl.rollout(model, pol, sae, [e], greedy=True, max_new_tokens=n_tok) for e in exs]
    assert batched.tokens == [a.tokens[0] for a in alone]
    assert _per_episode(batched) == [_per_episode(a)[0] for a in alone]
    assert torch.equal(batched.rewards, torch.cat([a.rewards for a in alone]))
    plain = rl.generate(model, [e.prompt for e in exs], n_tok)
    assert batched.tokens != plain.tokens, "the policy must change the tokens for the test to mean anything"
    return batched


def test_rollout_of_prompts_of_any_length_is_one_left_padded_batch_on_a_rotary_model(tiny):
    tok = tiny[0].tokenizer
    model = _rotary(tok)
    assert evaluate.pads_left(model)
    exs = [Example("qa", p, "x", {}) for p in
           ("question : who is there ? answer :", "fact :", "question : x ? answer :", "reason : 1 + 2 = 3 ; so")]
    widths = {evaluate.to_tokens(model, e.prompt).shape[1] for e in exs}
    assert len(widths) == 4  # four lengths: unpadded batches would be four
    sae = tiny_sae(1)
    r = _assert_batched_rollout_equals_one_prompt_rollouts(model, _steering_policy(model, sae, 1, 30.0), sae, exs, 4)
    gen = rl.generate(model, [e.prompt for e in exs], 2)
    assert len({tuple(rows) for rows, _, _ in gen.calls}) == 1  # one batch for all four prompts
    assert len(r.tokens) == 4


def test_rollout_on_an_absolute_position_model_runs_unpadded_groups_with_one_prompt_results(tiny):
    model, world = tiny
    assert not evaluate.pads_left(model)
    exs = [world.reasoning(random.Random(i)) for i in range(5)]
    sae = tiny_sae(0)
    _assert_batched_rollout_equals_one_prompt_rollouts(model, _steering_policy(model, sae, 0, 30.0), sae, exs, 4)


def test_gemma_rollout_is_one_left_padded_batch_with_one_prompt_results(gemma):
    from steerlab.tasks.base import Example as TaskExample

    prompts = ["The capital of France is", "Q: What is 2 + 3?\nA:", "Once upon a time, in a small village by the sea,",
               "Water"]
    exs = [TaskExample("qa", p, "x", {}) for p in prompts]
    sae = tiny_sae(6, d_in=gemma.cfg.d_model)
    pol = _steering_policy(gemma, sae, 6, 1500.0)
    _assert_batched_rollout_equals_one_prompt_rollouts(gemma, pol, sae, exs, 4)
    gen = rl.generate(gemma, prompts, 1)
    assert [rows for rows, _, _ in gen.calls] == [[3, 0, 1, 2]]  # one batch, shortest first


def test_rollout_steps_line_up_with_episodes(tiny):
    model, world = tiny
    sae = tiny_sae(0)
    pol = control.new_policy(control.ControlConfig(layers=(0,), d_model=32, d_sae=16, d_hidden=8), sae)
    exs = [world.reasoning(random.Random(i)) for i in range(4)]
    r = rl.rollout(model, pol, sae, exs, max_new_tokens=3)
    assert r.rewards.shape == (4,) and r.x.shape[1] == 32
    for ep in range(4):  # one step per generated token up to and including <eos>, at most 3
        n = int((r.episode == ep).sum())
        assert n == min(3, len(r.completions[ep].split()) + 1)
        assert r.step[r.episode == ep].tolist() == list(range(n))


def test_grpo_advantages_are_relative_within_each_group():
    r = rl.Rollout([], [], torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.zeros(4, dtype=torch.long),
                   torch.arange(4), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2),
                   torch.ones(4, 3, dtype=torch.bool), torch.zeros(4, 1, dtype=torch.long), torch.zeros(4),
                   torch.zeros(4), [])
    adv = rl._advantages(r, "grpo", 2)
    assert adv[0] > 0 > adv[1]
    assert adv[2] == 0 and adv[3] == 0  # a group that agrees teaches nothing


def test_rlvr_improves_the_probe_reward_and_leaves_the_model_untouched(tiny):
    model, world = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = random.Random(1)
    pool = [world.closed_book(rng) for _ in range(4)]
    # the target: a word the random model samples now and then but never says greedily (a reachable reward)
    with torch.no_grad():
        probs = torch.stack([model(model.to_tokens(e.prompt))[0, -1].softmax(-1) for e in pool])
    probs[:, probs.argmax(-1)] = 0
    probs[:, model.tokenizer.all_special_ids] = 0
    target = model.tokenizer.convert_ids_to_tokens(int(probs.mean(0).argmax()))
    reward = lambda ex, c: float(c.split()[:1] == [target])  # noqa: E731
    cfg = rl.RLConfig(n_updates=15, batch_size=32, lm_lr=3e-3, seed=0)
    tuned, hist = rl.train_rlvr(model, lambda r: r.choice(pool), cfg, reward_fn=reward)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert hist["reward"][-1] > hist["reward"][0] + 0.3
    assert rl_eval.answers(tuned, pool) == [target] * 4


def test_final_answer_and_agreement():
    ex = Example("reasoning", "reason : 1 + 2 =", "1 + 2 = 3 ; so 3", {"result": 3})
    assert rl_eval.final_answer(ex, "1 + 2 = 3 ; so 3") == "3"
    assert rl_eval.final_answer(ex, "1 + 2 = 3 ;") == ""
    assert rl_eval.agreement(["A", "B", "3"], ["A", "C", "3"]) == pytest.approx(2 / 3)


def test_rl_config_validation():
    with pytest.raises(ValueError, match="divisible by group_size"):
        rl.RLConfig(algo="grpo", batch_size=10, group_size=4)
    with pytest.raises(ValueError, match="algo must be one of"):
        rl.RLConfig(algo="dqn")


def test_rlvr_is_reproducible_with_several_threads(tinyworld):
    """One seed, one RLVR model: with two CPU threads the embedding backward alone would let two runs drift
    apart (~1e-4 in four updates on tinyworld); steerlab.runs.deterministic makes them bit-identical."""
    model, world = tinyworld
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = rl.RLConfig(n_updates=4, batch_size=32, lm_lr=1e-4, seed=7)
        a, _ = rl.train_rlvr(model, tinyworld_tasks.heldout_like_sampler(world, "mcqa"), cfg)
        b, _ = rl.train_rlvr(model, tinyworld_tasks.heldout_like_sampler(world, "mcqa"), cfg)
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()  # restored on exit
    moved = [not torch.equal(p, q) for p, q in zip(a.parameters(), model.parameters())]
    assert any(moved)  # training changed the weights (else equality proves nothing)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_final_answer_of_decoded_subword_text():
    """A real model's suite: answers are decoded text after "A:" (a leading space, a newline, the next block)."""
    from steerlab.tasks.base import Example as TaskExample

    sums = TaskExample("reasoning", "Q: 61 + 48 =\nA:", "109", {"result": 109}, max_new_tokens=4)
    assert rl_eval.final_answer(sums, " 109\n\nQ:") == "109"
    assert rl_eval.final_answer(sums, " about\n") == ""
    fact = TaskExample("conflict", "Q: Who invented the battery?\nA:", "Alessandro Volta")
    assert rl_eval.final_answer(fact, " Alessandro Volta\n\nContext:") == "Alessandro"
    reward = rl_eval.first_word_reward("Paris")
    assert reward(fact, " Paris\n\nQ:") == 1.0 and reward(fact, " Lyon, Paris") == 0.0


class _Suite:
    """A stand-in for a real model's suite: conflicts by split and arithmetic, no world."""

    def conflicts(self, n, seed=0, split="eval"):
        from steerlab.tasks.base import Example as TaskExample

        return [TaskExample("conflict", f"{split} {seed} {i}", "ctx", {"context_value": "ctx", "memory_value": "mem"})
                for i in range(n)]

    def reasoning(self, n, seed=0):
        from steerlab.tasks.base import Example as TaskExample

        return [TaskExample("reasoning", f"sum {seed} {i}", "3", {"result": 3}) for i in range(n)]


def test_control_settings_of_a_real_suite_train_and_evaluate_on_disjoint_prompts():
    settings = rl_eval.control_settings(_Suite(), n_eval=5, seed=0, n_train=20)
    assert list(settings) == ["conflict", "reasoning"]
    conflict = settings["conflict"]
    assert len(conflict.heldout) == 5 and all(e.prompt.startswith("eval") for e in conflict.heldout)
    rng = random.Random(0)
    assert all(conflict.sampler(rng).prompt.startswith("fit") for _ in range(10))  # trained on the fit split
    held = {e.prompt for e in settings["reasoning"].heldout}
    assert not held & {settings["reasoning"].sampler(rng).prompt for _ in range(50)}


def test_control_settings_of_tinyworld_are_the_three_heldout_settings(tiny):
    model, world = tiny
    from steerlab.tasks.tinyworld import TinyworldSuite

    settings = rl_eval.control_settings(TinyworldSuite(world), n_eval=6)
    assert list(settings) == ["mcqa_single", "mcqa_multi", "reasoning"]
    assert [e.prompt for e in settings["reasoning"].heldout] == [e.prompt for e in world.eval_sets(6)["reasoning_heldout"]]


def test_single_token_words_and_the_summary(tiny):
    model, world = tiny
    words, ids = rl_eval.single_token_words(model, ["paris", "paris", "paris tokyo"])
    assert words == ["paris"] and ids == [model.tokenizer.convert_tokens_to_ids("paris")]
    m = rl_eval.summary({"s": ({"base": 0.5, "crl": 0.75}, {"crl": ["a"], "base": ["b"]})}, {"x": 1}, coef=2.0)
    assert m == {"s_base_acc": 0.5, "s_crl_acc": 0.75, "x": 1, "coef": 2.0}  # no RLVR: no agreement key
