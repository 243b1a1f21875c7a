import torch

from steerlab.models import ModelConfig, load_tinyworld
from steerlab.models.train import TrainConfig, train_tinyworld
from steerlab.world import WorldConfig


def _train(path, steps=40):
    return train_tinyworld(WorldConfig(seed=3, n_entities=8), ModelConfig(n_layers=1, d_model=32, d_mlp=64,
                                                                          n_heads=2, n_ctx=64, seed=3),
                           TrainConfig(steps=steps, batch_size=16, warmup=5, log_every=10, seed=3), path)


def test_training_lowers_the_loss_and_is_reproducible(tmp_path):
    m1, _, r1 = _train(tmp_path / "a")
    m2, _, _ = _train(tmp_path / "b")
    assert r1.losses[-1] < 0.8 * r1.losses[0]
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):  # bit for bit (deterministic kernels)
        assert torch.equal(v1, v2), f"retraining with the same seed changed {k}"
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is restored after training
    loaded, world = load_tinyworld(tmp_path / "a")
    toks = loaded.to_tokens("question : x color ? answer :")
    torch.testing.assert_close(loaded(toks), m1(toks))


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    _train(tmp_path / "a", steps=10)
    before = (tmp_path / "a" / "model.safetensors").read_bytes()
    import steerlab.models.tinyworld as models

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.World, "save", boom)
    try:
        _train(tmp_path / "a", steps=10)
    except RuntimeError:
        pass
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == before


def test_config_validation():
    import pytest

    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(steps=10, warmup=10)
