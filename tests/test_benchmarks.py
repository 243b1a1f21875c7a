"""The benchmark scripts run at a tiny size, so they cannot rot (their figures come from full runs, not from here)."""

import importlib.util
import json

from steerlab.models.paths import REPO_ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generation_benchmark_runs_on_both_models(tmp_path, gemma):
    gen = _load("generation")
    out = tmp_path / "generation.json"
    report = gen.main(["--models", "gemma-3-270m", "tinyworld", "--tokens", "2", "--batch", "3", "--repeats", "1",
                       "--out", str(out)], models={"gemma-3-270m": gemma})
    assert json.loads(out.read_text()).keys() == report.keys()
    g = report["gemma-3-270m"]
    for key in ("steered_vs_hf_generate_b1", "steered_vs_hf_generate_b16", "hook_overhead"):
        assert g[key] > 0
    assert "steered_vs_hf_generate_b1" not in report["tinyworld"] and report["tinyworld"]["hook_overhead"] > 0


def test_sae_training_benchmark_runs_on_both_models(tmp_path, gemma):
    bench = _load("sae_training")
    out = tmp_path / "sae_training.json"
    report = bench.main(["--models", "gemma-3-270m", "tinyworld", "--tokens", "256", "--batch", "128", "--d_sae",
                         "64", "--out", str(out)], models={"gemma-3-270m": gemma})
    assert json.loads(out.read_text()).keys() == report.keys()
    assert report["torch_threads"] > 0
    for name in ("gemma-3-270m", "tinyworld"):
        res = report[name]
        assert 0 < res["saelens_vs_harvest"] and 0 < res["saelens_vs_harvest_all_layers"]
        assert res["saelens_vs_harvest"] == res["one_layer"]["ratio"] and res["one_layer"]["ratio_standalone"] > 0
        one, every = res["one_layer"], res["all_layers"]
        assert len(one["layers"]) == 1 and len(every["layers"]) > 1
        assert one["training_tokens"] == 256 and one["activations"] >= 256  # trained on the harvest once
        assert set(one["breakdown_seconds"]["per_sae"]) == {str(one["layers"][0])}
