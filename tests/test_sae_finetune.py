import json
import shutil

import pytest
import torch

from steerlab import sae as S
from steerlab.evals import sae_quality as E
from steerlab.sae import finetune as F

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rows(tinyworld):
    model, world = tinyworld
    return S.token_rows(world.training_stream(21), model.tokenizer, 640, 28)


def test_decoder_kl_finetuning_lowers_kl_and_keeps_the_code(tinyworld, rows, tmp_path):
    """A weak SAE (a shipped one, its decoder rotated by noise): fine-tuning lowers its held-out KL to the clean
    model clearly, while the encoder side, the decoder norms and the model stay exactly as they were."""
    model, world = tinyworld
    sae = S.load_sae("tinyworld", layer=1)
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1, keepdim=True)
        noisy = sae.W_dec + 0.6 * norms * torch.randn(sae.W_dec.shape, generator=torch.Generator().manual_seed(0)) / 11
        sae.W_dec.copy_(noisy * norms / noisy.norm(dim=-1, keepdim=True))
    held = S.token_rows(world.training_stream(22), model.tokenizer, 200, 24)
    before = E.downstream_loss(sae, model, held)["kl_to_clean"]
    x = next(S.iter_activations(model, held[:50], sae.cfg.metadata.hook_name))
    code = sae.encode(x).detach().clone()
    frozen = {k: v.detach().clone() for k, v in sae.state_dict().items() if k != "W_dec"}
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    curve = F.finetune_decoder_kl(model, sae, rows, steps=40, lr=3e-3, batch_size=32, log_every=10)
    after = E.downstream_loss(sae, model, held)["kl_to_clean"]
    assert curve["step"] == [10, 20, 30, 40] and len(curve["kl"]) == len(curve["fvu"]) == 4
    assert after < 0.6 * before, (before, after)
    assert torch.allclose(sae.W_dec.norm(dim=-1, keepdim=True), norms, atol=1e-5)
    assert torch.allclose(sae.encode(x), code, atol=1e-5)  # the same latents, equally strong
    assert all(torch.equal(sae.state_dict()[k], v) for k, v in frozen.items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert all(p.grad is None for p in list(model.parameters()) + list(sae.parameters()))
    assert all(p.requires_grad for p in sae.parameters())  # restored afterwards


def test_finetune_folder_writes_back_and_refuses_bad_input(tinyworld, rows, tmp_path):
    model, _ = tinyworld
    folder = tmp_path / "blocks.1.hook_resid_post"
    shutil.copytree(S.SAE_DIR / "tinyworld" / "blocks.1.hook_resid_post", folder)
    old = S.fingerprint(S.load_sae(folder).W_dec)
    sae, curve = F.finetune_folder(model, folder, rows, steps=3, batch_size=16, log_every=1)
    assert curve["step"] == [1, 2, 3] and not list(folder.glob("*.tmp"))
    assert S.fingerprint(S.load_sae(folder).W_dec) == S.fingerprint(sae.W_dec) != old
    with pytest.raises(ValueError, match="steps"):
        F.finetune_decoder_kl(model, sae, rows, steps=0)
    with pytest.raises(ValueError, match="rows"):
        F.finetune_decoder_kl(model, sae, rows[0], steps=1)
    sae.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(ValueError, match="does not have"):
        F.finetune_decoder_kl(model, sae, rows, steps=1)


def test_recipe_runs_the_finetuning_and_records_it(tinyworld, tmp_path):
    model, world = tinyworld
    cfg = S.SAETrainConfig(layers=(1,), d_sae=64, k=8, training_tokens=8192, batch_tokens=512,
                           n_batches_in_buffer=64, lr=5e-3, kl_finetune_steps=4)
    res = E.train_tinyworld_saes(model, world, cfg, tmp_path)
    assert res.curves[1]["kl_finetune"]["step"][-1] == 4
    assert json.loads((tmp_path / "training.json").read_text())["config"]["kl_finetune_steps"] == 4
    with pytest.raises(ValueError, match="kl_finetune_steps"):
        S.SAETrainConfig(kl_finetune_steps=-1)
