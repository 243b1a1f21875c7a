import numpy as np
import pytest
import torch

from steerlab.steer import spare
from steerlab.world import Example
from test_hooks import HOOK, resid, tiny_sae


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


def test_targets_are_loss_weighted_means():
    sae = tiny_sae(d_in=8, d_sae=4)
    torch.manual_seed(1)
    codes = torch.rand(6, 4) * torch.tensor([1.0, 1.0, 0.0, 0.0]) * 3 + torch.tensor([0, 0, 0.0, 0])
    y = np.array([1, 1, 1, 0, 0, 0])
    codes[y == 1, 0] += 4  # feature 0: context; feature 1: memory
    codes[y == 0, 1] += 4
    hidden = codes @ sae.W_dec.detach()  # orthonormal rows: encoding gives back ``codes``
    ss, so = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 0.2]), np.array([2.0, 1.0, 0.3, 0.1, 0.4, 0.2])
    labels = spare.ConflictLabels([None] * 6, y, ss, so, 0)
    fit = spare.fit_spare(labels, hidden, sae, HOOK, p=0.99)
    assert 0 in fit.context_features and 1 in fit.memory_features
    pi_c = so[:3] / (ss[:3] + so[:3]); pi_c /= pi_c.sum()
    pi_m = ss[3:] / (ss[3:] + so[3:]); pi_m /= pi_m.sum()
    i, j = fit.context_features.index(0), fit.memory_features.index(1)
    assert fit.w_context[i].item() == pytest.approx(float(pi_c @ codes[:3, 0].numpy()), rel=1e-4)
    assert fit.w_memory[j].item() == pytest.approx(float(pi_m @ codes[3:, 1].numpy()), rel=1e-4)


def test_spare_edit_matches_the_formula_at_the_last_prompt_position(tinyworld):
    model, world = tinyworld
    sae = tiny_sae()
    prompts = [f"question : {world.entities[3]} food ? answer :"]
    h = resid(model, prompts)[0]
    z = torch.relu(h @ sae.W_enc.detach())
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
    # the answer the model gave is the one with the lower loss
    assert np.all((labels.ss_loss < labels.so_loss) == (labels.y == 1))
    confirmed = np.array([e.meta["confirmed"] for e in labels.examples])
    assert (labels.y == confirmed).mean() > 0.9  # tinyworld's rule: a report wins when at least 3 of its 5 checks confirm it
