import json

import pytest
import torch

from steerlab import models
from steerlab import sae as S

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tw():
    return models.load_tinyworld()


@pytest.fixture(scope="module")
def trained(tw, tmp_path_factory):
    model, world = tw
    cfg = S.SAETrainConfig(layers=(0, 1), d_sae=64, k=8, training_tokens=24576, batch_tokens=512,
                           n_batches_in_buffer=64, log_every=2, lr=5e-3)
    rows = S.token_rows(world, model.tokenizer, 600, cfg.context_size, seed=3)
    out = tmp_path_factory.mktemp("saes")
    return S.train_saes(model, rows, cfg, out), out


def test_token_rows_layout(tw):
    model, world = tw
    rows = S.token_rows(world, model.tokenizer, 5, 24)
    assert rows.shape == (5, 24)
    assert (rows[:, 0] == model.tokenizer.bos_token_id).all()
    text = next(world.training_stream(0)).split()
    assert model.tokenizer.convert_ids_to_tokens(rows[0, 1: 1 + len(text)].tolist()) == text
    assert (rows[0, 1 + len(text):] == model.tokenizer.pad_token_id).all()


def test_config_errors():
    with pytest.raises(ValueError, match="architecture"):
        S.SAETrainConfig(architecture="gated")
    with pytest.raises(ValueError, match="n_batches_in_buffer"):
        S.SAETrainConfig(n_batches_in_buffer=2, batch_tokens=4096)
    with pytest.raises(ValueError, match="k=600"):
        S.SAETrainConfig(k=600, d_sae=512)


def test_training_writes_saelens_format_and_learns(trained, tw):
    res, out = trained
    model, _ = tw
    assert set(res.saes) == {0, 1}
    for layer, path in res.paths.items():
        spec = json.loads((path / "cfg.json").read_text())
        assert spec["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
        assert spec["metadata"]["model_fingerprint"] == S.model_fingerprint(model)
        assert (path / "sae_weights.safetensors").is_file()
        curve = res.curves[layer]["fvu"]
        assert len(curve) >= 10 and curve[-1] < 0.8 * curve[0]  # it learned something
        assert res.curves[layer]["l0"][-1] <= 8 + 1e-6
    recipe = json.loads((out / "training.json").read_text())
    assert recipe["config"]["d_sae"] == 64
    assert S.load_recipe(out) == S.SAETrainConfig(layers=(0, 1), d_sae=64, k=8, training_tokens=24576,
                                                  batch_tokens=512, n_batches_in_buffer=64, log_every=2, lr=5e-3)
    assert S.load_recipe("tinyworld").k == 32  # the shipped SAEs' recipe
    sae = S.load_sae(out, layer=1, model=model)
    assert sae.cfg.d_sae == 64 and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_load_recipe_names_a_bad_file(tmp_path):
    with pytest.raises(ValueError, match="training.json"):
        S.load_recipe(tmp_path)
    (tmp_path / "training.json").write_text('{"config": {"d_sae": 64, "colour": 1}}')
    with pytest.raises(ValueError, match="not a steerlab SAE recipe"):
        S.load_recipe(tmp_path)


def test_encode_pre_topk_matches_topk_code(trained, tw):
    res, _ = trained
    sae = res.saes[0]
    x = torch.randn(7, sae.cfg.d_in) * 3
    z_pre = S.encode_pre_topk(sae, x)
    z = sae.encode(x)
    assert z_pre.shape == (7, 64) and (z_pre >= 0).all()
    top = z_pre.topk(sae.cfg.k, dim=-1).indices
    kept = torch.zeros_like(z_pre, dtype=torch.bool).scatter_(-1, top, True)
    assert torch.equal(kept & (z_pre > 0), z > 0)  # the SAE's own code is the top-k of the pre-top-k code
    with pytest.raises(ValueError, match="d_in"):
        S.encode_pre_topk(sae, torch.randn(2, 5))


def test_splice_keeps_bos_and_changes_the_rest(trained, tw):
    res, _ = trained
    model, _ = tw
    sae = res.saes[1]
    tokens = model.to_tokens("question : the")
    seen = {}
    hooks = S.splice_hooks(sae) + [(sae.cfg.metadata.hook_name, lambda x, hook: seen.setdefault("x", x.clone()))]
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    clean = cache[sae.cfg.metadata.hook_name]
    assert torch.allclose(seen["x"][:, 0], clean[:, 0])
    assert torch.allclose(seen["x"][:, 1:], sae(clean)[:, 1:], atol=1e-5)


def test_bad_inputs_say_what_to_fix(trained, tw):
    res, out = trained
    model, _ = tw
    sae = res.saes[0]
    other = models.build_model(models.ModelConfig(seed=123), model.tokenizer)  # same shape, other weights
    with pytest.raises(ValueError, match="another 'tinyworld' checkpoint"):
        S.check_fits(other, sae)
    narrow = models.build_model(models.ModelConfig(d_model=64, n_layers=2, d_mlp=256), model.tokenizer)
    with pytest.raises(ValueError, match="d_in=128"):
        S.check_fits(narrow, sae)
    moved = S.load_sae(out, layer=0)
    moved.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(ValueError, match="does not have"):
        S.check_fits(model, moved)
    with pytest.raises(FileNotFoundError, match="train one"):
        S.load_sae(out, layer=3)
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        S.train_saes(model, torch.zeros(2, S.SAETrainConfig().context_size, dtype=torch.long), S.SAETrainConfig(layers=(7,)),
                     out / "x")


def test_pretrained_release_offline_error():
    with pytest.raises((ConnectionError, ValueError), match="offline default|pretrained_saes.yaml"):
        S.load_sae("gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")
