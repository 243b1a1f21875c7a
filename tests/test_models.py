import json
import shutil

import pytest
import torch

from steerlab import models
from steerlab.core import run as evaluate
from steerlab.evals.behaviour import BEHAVIOUR_TARGETS, behaviour_table


def test_shipped_model_meets_behaviour_targets(tinyworld):
    model, world = tinyworld
    table = behaviour_table(model, world, n=200)
    for key, (lo, hi) in BEHAVIOUR_TARGETS.items():
        assert lo <= table[key] <= hi, f"{key}={table[key]:.3f} outside [{lo}, {hi}]"


def test_tokenizer_round_trips_through_transformer_lens(tinyworld):
    model, world = tinyworld
    prompt = world.closed_book(__import__("random").Random(0)).prompt
    toks = model.to_tokens(prompt)
    assert toks[0, 0].item() == model.tokenizer.bos_token_id
    assert toks.shape[1] == len(prompt.split()) + 1
    assert model.to_string(toks[0, 1:]) == prompt


def test_generation_answers_a_reasoning_chain(tinyworld):
    model, world = tinyworld
    ex = world.reasoning(__import__("random").Random(1), use_unseen=False)
    assert evaluate.complete(model, [ex.prompt], max_new_tokens=24)[0] == ex.answer


def _copy(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(models.TINYWORLD_DIR, dst)
    return dst


def test_corrupt_weights_name_the_file(tmp_path):
    ckpt = _copy(tmp_path)
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        models.load_tinyworld(ckpt)


def test_mismatched_config_names_the_file(tmp_path):
    ckpt = _copy(tmp_path)
    cfg = json.loads((ckpt / "model_cfg.json").read_text())
    cfg["d_model"] = 64
    (ckpt / "model_cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match"):
        models.load_tinyworld(ckpt)
    (ckpt / "model_cfg.json").write_text("{")
    with pytest.raises(ValueError, match="model_cfg.json"):
        models.load_tinyworld(ckpt)


def test_missing_tokenizer_names_the_folder(tmp_path):
    ckpt = _copy(tmp_path)
    shutil.rmtree(ckpt / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        models.load_tinyworld(ckpt)


def test_real_model_offline_error_names_the_default():
    with pytest.raises(ConnectionError, match="tinyworld"):
        models.load_model("gpt2-small")


def test_unknown_model_name_is_named():
    with pytest.raises(ValueError, match="OFFICIAL_MODEL_NAMES"):
        models.load_model("not-a-model")


def test_load_model_by_path(tinyworld):
    model = models.load_model(str(models.TINYWORLD_DIR))
    ref, _ = tinyworld
    torch.testing.assert_close(model.W_E, ref.W_E)


def test_no_loader_attaches_the_world_and_explain_refuses_a_vocabulary_the_model_cannot_spell(tinyworld):
    """No ``model.world`` monkeypatch: the world comes with the task suite. Without it, ``explain`` on a tinyworld
    SAE once ran silently over the English list; now the default list is refused on a word-level model and the
    suite's vocabulary is the world's lexicon."""
    from steerlab import explain, tasks
    from steerlab.evals import explanations
    from steerlab.sae import io as sae_io

    model, world = tinyworld
    tiny_sae = sae_io.load_sae("tinyworld", layer=sae_io.DEFAULT_LAYER)
    assert not hasattr(model, "world") and not hasattr(models.load_model("tinyworld"), "world")
    suite = tasks.load_suite("tinyworld")
    assert explanations.vocabulary(suite) == world.lexicon()
    with pytest.raises(ValueError, match="pass words="):
        explain.explain(model, tiny_sae, progress=False)
    ex = explain.explain(model, tiny_sae, words=explanations.vocabulary(suite), progress=False)
    assert ex.words == explanations.vocabulary(suite)


class _FactSuite:
    """A suite without a world (as a real model's): closed-book facts only, no refusals."""

    name = "fake"

    def __init__(self, world):
        self.w = world

    def facts(self, n, seed=0):
        rng = __import__("random").Random(seed)
        return [self.w.closed_book(rng) for _ in range(n)]

    def provides(self, what):
        return what == "facts"


def test_suite_behaviour_measures_what_a_suite_provides_and_skips_the_rest(tinyworld):
    from steerlab.evals import behaviour
    from steerlab.tasks.tinyworld import TinyworldSuite

    model, world = tinyworld
    res = behaviour.suite_behaviour(model, _FactSuite(world), n=20)
    assert set(res.table) == {"closed_book_acc", "n_facts"} and res.table["n_facts"] == 20
    assert res.table["closed_book_acc"] >= 0.9  # the shipped model knows its facts (target 0.98 at n=200)
    assert set(res.skipped) == {"conflicts", "mcqa", "reasoning", "requests"} and not res.targets
    metrics = behaviour.summary(model, _FactSuite(world), res)
    assert metrics["skipped"] == "conflicts, mcqa, reasoning, requests" and metrics["n_params"] > 0
    tw = behaviour.suite_behaviour(model, TinyworldSuite(world), n=10)
    assert set(tw.table) == set(behaviour_table(model, world, n=10)) and tw.targets == BEHAVIOUR_TARGETS
    assert {"train_seconds", "retrained", "n_entities", "vocab_size", "n_params"} <= set(
        behaviour.summary(model, TinyworldSuite(world), tw, {"train_seconds": 1.0}))
