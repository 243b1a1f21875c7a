"""steerlab.control.finetuned: RLVR model checkpoints load back exactly and refuse what does not fit."""

import pytest
import torch
from control_fixtures import tiny_model

from steerlab.control import finetuned


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base, _ = tiny_model(tmp_path_factory.mktemp("a"), seed=0)
    other, _ = tiny_model(tmp_path_factory.mktemp("b"), seed=1)
    return base, other


def _tuned(base):
    import copy

    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.blocks[0].mlp.W_in.add_(0.5)  # "fine-tuned": other weights, the same architecture
    return tuned


def test_round_trip_gives_the_fine_tuned_weights_and_leaves_the_base_alone(models, tmp_path):
    base, _ = models
    tuned = _tuned(base)
    before = base.blocks[0].mlp.W_in.clone()
    finetuned.save_finetuned(tuned, base, tmp_path / "rlvr_x.safetensors", rlvr_updates=3)
    got = finetuned.load_finetuned(base, tmp_path / "rlvr_x.safetensors")
    tokens = torch.tensor([[2, 5, 7, 9]])
    torch.testing.assert_close(got(tokens), tuned(tokens))
    assert not torch.allclose(got(tokens), base(tokens))
    assert torch.equal(base.blocks[0].mlp.W_in, before) and got is not base
    assert '"rlvr_updates": 3' in (tmp_path / "rlvr_x.json").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_of_another_base_model_is_refused_naming_the_file(models, tmp_path):
    base, other = models
    finetuned.save_finetuned(_tuned(base), base, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"m\.safetensors was fine-tuned from another model"):
        finetuned.load_finetuned(other, tmp_path / "m.safetensors")


def test_corrupt_missing_or_misfitting_checkpoints_name_the_file(models, tmp_path):
    base, _ = models
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.safetensors is missing or not a safetensors"):
        finetuned.load_finetuned(base, bad)
    with pytest.raises(ValueError, match=r"absent\.safetensors is missing"):
        finetuned.load_finetuned(base, tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in base.state_dict().items()}
    state["blocks.0.mlp.W_in"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"shape\.safetensors does not fit.*blocks\.0\.mlp\.W_in"):
        finetuned.load_finetuned(base, tmp_path / "shape.safetensors")
