import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from steerlab.core import run as evaluate
from steerlab.core import hooks
from steerlab.steer import features
from steerlab import sae as sae_mod

HOOK = "blocks.1.hook_resid_post"


def tiny_sae(d_in=128, d_sae=8, seed=0):
    """A hand-built SAE with orthonormal decoder rows and encoder = decoder^T (reads what it writes)."""
    torch.manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae))
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.load_state_dict({"W_enc": q.clone(), "W_dec": q.T.clone(), "b_enc": torch.zeros(d_sae),
                         "b_dec": torch.zeros(d_in)})
    sae.cfg.metadata.hook_name = HOOK
    return sae


def resid(model, prompts, fwd_hooks=()):
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        _, cache = model.run_with_cache(model.to_tokens(prompts), names_filter=HOOK)
    return cache[HOOK]


def test_tracker_positions_for_cached_and_uncached_passes():
    tr = hooks.PositionTracker()
    prompt = torch.randn(2, 5, 4)
    tr(prompt)  # prompt pass
    assert (tr.offset, tr.prompt_len) == (0, 5)
    assert tr.mask("last_prompt", 5).tolist() == [False] * 4 + [True]
    tr(torch.randn(2, 1, 4))  # cached step: position 5
    assert tr.offset == 5 and tr.mask("generated", 1).tolist() == [True]
    assert tr.mask("last_prompt", 1).tolist() == [False]
    tr(torch.randn(2, 1, 4))
    assert tr.offset == 6
    tr2 = hooks.PositionTracker()
    tr2(prompt)
    tr2(torch.cat([prompt, torch.randn(2, 1, 4)], 1))  # uncached step: same prompt, one more token
    assert (tr2.offset, tr2.prompt_len) == (0, 5)
    assert tr2.mask("last_prompt+generated", 6).tolist() == [False] * 4 + [True, True]
    tr2(torch.randn(2, 6, 4))  # a different sequence: a new prompt
    assert tr2.prompt_len == 6
    with pytest.raises(ValueError, match="positions must be one of"):
        hooks.add_vector(HOOK, torch.zeros(4), positions="first")


def test_last_prompt_edits_only_the_last_position(tinyworld):
    model, world = tinyworld
    prompts = ["question : a b ? answer :".replace("a b", f"{world.entities[0]} color")]
    v = torch.ones(model.cfg.d_model)
    base = resid(model, prompts)
    for positions, changed in [("last_prompt", [base.shape[1] - 1]), ("all", list(range(base.shape[1])))]:
        diff = (resid(model, prompts, hooks.add_vector(HOOK, v, 2.0, positions)) - base).abs().amax(-1)[0]
        assert torch.nonzero(diff > 1e-4).flatten().tolist() == changed
        assert torch.allclose(resid(model, prompts, hooks.add_vector(HOOK, v, 2.0, positions))[0, -1],
                              base[0, -1] + 2.0 * v, atol=1e-4)


@pytest.mark.parametrize("positions", hooks.POSITIONS)
def test_steering_holds_with_the_kv_cache(tinyworld, rng, positions):
    model, world = tinyworld
    prompts = [world.reasoning(rng).prompt for _ in range(2)] + [world.request(rng).prompt for _ in range(2)]
    torch.manual_seed(0)
    steer = hooks.add_vector(HOOK, torch.randn(model.cfg.d_model) * 20, 1.0, positions)
    base = evaluate.complete(model, prompts, 6)
    cached = evaluate.complete(model, prompts, 6, steer, use_cache=True)
    uncached = evaluate.complete(model, prompts, 6, steer, use_cache=False)
    assert cached == uncached
    assert cached != base  # the steering did something (else the comparison proves nothing)
    assert evaluate.complete(model, prompts, 6) == base  # hooks were removed on exit


def test_amplify_calibrate_clamp_match_the_formulas(tinyworld):
    model, world = tinyworld
    sae = tiny_sae()
    S = [1, 3]
    x = resid(model, [f"question : {world.entities[1]} pet ? answer :"])[0]
    z = torch.relu((x - sae.b_dec) @ sae.W_enc[:, S] + sae.b_enc[S])
    assert torch.allclose(features.read_features(sae, x, S), z)
    # add a known amount of feature 1 so ReLU(X S) is not all zero
    prompts = [f"question : {world.entities[1]} pet ? answer :"]
    push = hooks.add_vector(HOOK, sae.W_dec[1].detach(), 5.0)
    x = resid(model, prompts, push)[0]
    z = features.read_features(sae, x, S)
    assert (z > 0).any()
    W = sae.W_dec[S].detach()
    amp = resid(model, prompts, push + features.amplify(HOOK, sae, S, 2.0))[0]
    assert torch.allclose(amp, x + 2.0 * z @ W, atol=1e-4)
    cal = resid(model, prompts, push + features.calibrate(HOOK, sae, S, 3.0))[0]
    assert torch.allclose(cal, x - z @ W + 3.0 * W.mean(0), atol=1e-4)
    cl = resid(model, prompts, push + features.clamp(HOOK, sae, S, 7.0))[0]
    on = z > 0  # where the feature is active, clamping sets its read-out exactly
    assert torch.allclose(features.read_features(sae, cl, S)[on], torch.full_like(z[on], 7.0), atol=1e-3)
    assert torch.allclose(resid(model, prompts, push + features.amplify(HOOK, sae, S, 0.0))[0], x, atol=1e-5)
    with pytest.raises(ValueError, match="feature set S is empty"):
        features.amplify(HOOK, sae, [], 1.0)


def test_feature_edits_on_an_untied_sae_with_biases(tinyworld, untied_sae):
    """On the model's residuals, through an untied SAE with non-zero biases: amplification
    X' = X + alpha ReLU((X - b_dec) W_enc[:, S] + b_enc[S]) W_dec[S] and calibration
    X' = X - ReLU(...) W_dec[S] + beta mean(W_dec[S]), written out here; a reading without a bias or through the
    decoder, or a write with encoder columns, gives other numbers on this SAE."""
    model, world = tinyworld
    sae = untied_sae(d_in=model.cfg.d_model, d_sae=8)
    S = [1, 2, 5]
    prompts = [f"question : {world.entities[1]} pet ? answer :"]
    x = resid(model, prompts)[0]
    W_enc, b_enc, W_dec, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.W_dec.detach(), sae.b_dec.detach()
    z = torch.relu((x - b_dec) @ W_enc[:, S] + b_enc[S])
    assert (z > 0).any() and (z == 0).any()
    want_amp = x + 2.0 * z @ W_dec[S]
    want_cal = x - z @ W_dec[S] + 3.0 * W_dec[S].mean(0)
    assert torch.allclose(resid(model, prompts, features.amplify(HOOK, sae, S, 2.0))[0], want_amp, atol=1e-4)
    assert torch.allclose(resid(model, prompts, features.calibrate(HOOK, sae, S, 3.0))[0], want_cal, atol=1e-4)
    wrong = {"no b_dec": torch.relu(x @ W_enc[:, S] + b_enc[S]) @ W_dec[S],
             "no b_enc": torch.relu((x - b_dec) @ W_enc[:, S]) @ W_dec[S],
             "decoder read": torch.relu((x - b_dec) @ W_dec[S].T + b_enc[S]) @ W_dec[S],
             "encoder write": z @ W_enc[:, S].T}
    for name, edit in wrong.items():
        assert not torch.allclose(x + 2.0 * edit, want_amp, atol=1e-2), name


def test_code_reading_leaves_features_outside_the_topk_cut_alone(tinyworld):
    """read="code" reads the TopK SAE's own sparse code: a feature with a positive encoder score that is not among
    the input's k largest reads 0 (so amplification leaves the input as it is); read="encoder" reads the score."""
    model, world = tinyworld
    sae = sae_mod.load_sae(layer=sae_mod.DEFAULT_LAYER)
    prompts = [f"question : {world.entities[1]} pet ? answer :"]
    x = resid(model, prompts)[0][-1]
    pre, code = sae_mod.encode_pre_topk(sae, x), sae.encode(x[None])[0]
    S = [int(i) for i in ((pre > 0) & (code == 0)).nonzero()[:2, 0]]  # scored, but cut by top-k
    assert len(S) == 2
    assert torch.allclose(features.read_features(sae, x, S, read="code"), torch.zeros(2))
    assert (features.read_features(sae, x, S) > 0).all()
    last = lambda edit: resid(model, prompts, edit)[0][-1]
    assert torch.allclose(last(features.amplify(HOOK, sae, S, 5.0, "last_prompt", read="code")), x, atol=1e-5)
    assert not torch.allclose(last(features.amplify(HOOK, sae, S, 5.0, "last_prompt")), x, atol=1e-3)
    with pytest.raises(ValueError, match="read must be one of"):
        features.amplify(HOOK, sae, S, 1.0, read="decoder")


def test_hooks_are_removed_when_a_cell_fails(tinyworld):
    model, world = tinyworld
    prompts = [f"question : {world.entities[2]} city ? answer :"]
    before = evaluate.last_token_logits(model, prompts)

    def broken(x, hook=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        evaluate.last_token_logits(model, prompts, [(HOOK, broken)])
    assert torch.equal(evaluate.last_token_logits(model, prompts), before)
