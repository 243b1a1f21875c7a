import unittest.mock as mock

import numpy as np
import pytest
import torch

from steerlab.steer import spare
from steerlab.world import Example
from test_hooks import HOOK, resid


def test_select_features_finds_the_informative_features_and_splits_by_sign():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    z = rng.random((200, 6)) * 0.1
    z[:, 2] += y * 3.0  # higher when the model uses the context -> Z_C
    z[:, 4] += (1 - y) * 2.0  # higher when it uses memory -> Z_M
    mi, zc, zm = spare.select_features(z, y, p=0.6)
    assert zc == [2] and zm == [4]
    assert mi[[2, 4]].min() > mi[[0, 1, 3, 5]].max()
    with pytest.raises(ValueError, match="both behaviours"):
        spare.select_features(z, np.zeros(200, dtype=int), 0.5)
    with pytest.raises(ValueError, match="p"):
        spare.select_features(z, y, 0.0)


def test_cut_features_by_hand():
    """The authors' select_functional_activations: MI sorted [0.5, 0.25, 0.125, 0.125] (features 3, 0, 1, 2; ties:
    lower id first), total 1. p = 0.6: cumulative 0.5, 0.75 > 0.6 -> n = 2. p = 0.5: 0.5 is not > 0.5 -> still
    n = 2 (strict). Feature 0 has E = 0: skipped and not counted, so the walk goes on to feature 1 to fill n."""
    mi = np.array([0.25, 0.125, 0.125, 0.5])
    E = np.array([0.0, -1.0, -2.0, 5.0])
    assert spare.cut_features(mi, E, 0.6) == ([3], [1])
    assert spare.cut_features(mi, E, 0.5) == ([3], [1])
    assert spare.cut_features(mi, E, 0.25) == ([3], [])  # 0.5 > 0.25: n = 1
    assert spare.cut_features(mi, E, 1.0) == ([3], [1, 2])  # never exceeded: every feature with E != 0
    assert spare.cut_features(np.zeros(4), E, 0.1) == ([3], [1, 2])  # no MI at all: the same


def test_targets_are_loss_weighted_means(untied_sae):
    """w_C = sum_{y=1} pi_i z_i, pi_i = so_i / (ss_i + so_i) normalised over y=1 prompts; w_M likewise with ss_i;
    z read by the untied SAE's encoder with both biases. Losses chosen so the weights are round numbers."""
    sae = untied_sae(d_in=8, d_sae=4, seed=2)
    hidden = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)) * 2
    y = np.array([1, 1, 1, 0, 0, 0])
    ss, so = np.array([1.0, 3.0, 1.0, 1.0, 1.0, 2.0]), np.array([3.0, 1.0, 1.0, 3.0, 1.0, 2.0])
    # y=1: so/(ss+so) = 0.75, 0.25, 0.5 -> pi = 0.5, 1/6, 1/3; y=0: ss/(ss+so) = 0.25, 0.5, 0.5 -> pi = 0.2, 0.4, 0.4
    pi_c, pi_m = torch.tensor([0.5, 1 / 6, 1 / 3]), torch.tensor([0.2, 0.4, 0.4])
    z = torch.relu((hidden - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach())
    mi = np.array([0.4, 0.3, 0.2, 0.1])
    labels = spare.ConflictLabels([None] * 6, y, ss, so, 0)
    with mock.patch.object(spare, "select_features", return_value=(mi, [0, 2], [1, 3])):  # the cut is pinned above
        fit = spare.fit_spare(labels, hidden, sae, HOOK, p=0.99)
    assert torch.allclose(fit.w_context, pi_c @ z[:3][:, [0, 2]], atol=1e-5)
    assert torch.allclose(fit.w_memory, pi_m @ z[3:][:, [1, 3]], atol=1e-5)
    assert not torch.allclose(fit.w_context, z[:3][:, [0, 2]].mean(0), atol=1e-3)  # the weights matter here


def test_spare_edit_matches_the_formula_at_the_last_prompt_position(tinyworld, untied_sae):
    model, world = tinyworld
    sae = untied_sae(d_in=model.cfg.d_model, d_sae=8)
    prompts = [f"question : {world.entities[3]} food ? answer :"]
    h = resid(model, prompts)[0]
    z = torch.relu((h - sae.b_dec.detach()) @ sae.W_enc.detach() + sae.b_enc.detach())  # both biases
    fit = spare.SpareFit(HOOK, np.zeros(8), [0, 1], [2, 3], torch.tensor([5.0, 0.5]), torch.tensor([0.2, 9.0]), 0.1)
    W = sae.W_dec.detach()
    for toward, up, w_up, down, w_down in [("context", [0, 1], fit.w_context, [2, 3], fit.w_memory),
                                           ("memory", [2, 3], fit.w_memory, [0, 1], fit.w_context)]:
        edited = resid(model, prompts, spare.spare_hooks([fit], {HOOK: sae}, 2.0, toward))[0]
        zl = z[-1]
        expect = (h[-1] - torch.minimum(2.0 * w_down, zl[down]) @ W[down]
                  + torch.clamp(2.0 * w_up - zl[up], min=0) @ W[up])
        assert torch.allclose(edited[-1], expect, atol=1e-4)
        assert torch.allclose(edited[:-1], h[:-1])  # only the last prompt position
        assert not torch.allclose(edited[-1], h[-1])
    with pytest.raises(ValueError, match="toward"):
        spare.spare_hooks([fit], {HOOK: sae}, 1.0, "both")


def test_labels_follow_the_models_greedy_answer(tinyworld, rng):
    model, world = tinyworld
    examples = [world.open_book(rng, "report", True) for _ in range(40)]
    junk = Example("open_book", examples[0].prompt, "", {"context_value": "zzz", "memory_value": "qqq"})
    labels = spare.label_conflicts(model, examples + [junk])
    assert labels.n_dropped >= 1 and len(labels.y) == len(labels.examples)
    assert 0 < labels.y.mean() < 1  # the conflict set is mixed
    # the authors' losses: mean NLL of every token of prompt + value after <bos>, written out here from the logits
    for i in (0, len(labels.y) - 1):
        e = labels.examples[i]
        for value, got in ((e.meta["context_value"], labels.ss_loss[i]), (e.meta["memory_value"], labels.so_loss[i])):
            tokens = model.to_tokens(e.prompt + " " + value)
            logp = model(tokens).log_softmax(-1)[0, :-1].gather(-1, tokens[0, 1:, None])
            assert got == pytest.approx(-logp.mean().item(), rel=1e-4)
    answer = spare.label_conflicts(model, labels.examples[:4], loss="answer")  # the named alternative
    from steerlab.steer.vectors import answer_nll
    want = answer_nll(model, [e.prompt for e in answer.examples], [e.meta["context_value"] for e in answer.examples])
    assert np.allclose(answer.ss_loss, want.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="loss must be one of"):
        spare.label_conflicts(model, examples[:1], loss="token")
    confirmed = np.array([e.meta["confirmed"] for e in labels.examples])
    assert (labels.y == confirmed).mean() > 0.9  # tinyworld's rule: a report wins when at least 3 of its 5 checks confirm it
