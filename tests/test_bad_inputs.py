"""Bad input gets a clear error, a failed run leaves the last good one (issue 24)."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from steerlab import pipeline
from steerlab.core import runs

# ------------------------------------------------------------------------------------ pipeline and run folders

PARAMETERS = '''alpha = 1.0       # a float parameter
n = 3             # an int parameter
name = "x"        # a str parameter
layers = [0, 1]   # a list of ints
fail = False      # True: the notebook raises after writing its outputs
run_dir = "runs/manual/00_tiny"  # output folder (set by the pipeline)
profile = "manual"                # profile name (set by the pipeline)
'''

BODY = '''import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from steerlab.core import runs
fig, ax = plt.subplots()
ax.plot([0, 1], [0, alpha])
runs.save_figure(fig, run_dir, "line")
runs.write_metrics(run_dir, {"alpha": alpha, "n": n, "name": name})
runs.write_metrics(run_dir, {"run_" + name: 1})  # a second call in one run merges
runs.write_artefacts(run_dir, table=runs.run_path(run_dir) / "table.txt")
if fail:
    raise ValueError("boom in the tiny notebook")
'''


def _notebook(folder, stem="00_tiny", other_param=None):
    """A tiny pipeline notebook: a parameters cell and a cell writing metrics, a figure and artefacts."""
    nb = nbformat.v4.new_notebook()
    params = PARAMETERS + (f"{other_param} = 0  # only this notebook has it\n" if other_param else "")
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def tiny(tmp_path):
    """(notebook folder, runs root) holding two tiny notebooks 00_tiny and 01_other."""
    nbs = tmp_path / "notebooks"
    _notebook(nbs, "00_tiny")
    _notebook(nbs, "01_other", other_param="only_here")
    return nbs, tmp_path / "runs"


def _profile(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_misspelt_section_is_an_error_naming_file_section_and_the_valid_ones(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tyni:\n  alpha: 2.0\n")
    with pytest.raises(pipeline.ProfileError) as e:
        pipeline.load_profile(path, notebook_dir=nbs)
    msg = str(e.value)
    assert str(path) in msg and "'00_tyni'" in msg and "did you mean '00_tiny'" in msg
    assert "01_other" in msg and "common" in msg


def test_misspelt_key_is_an_error_naming_file_section_key_and_the_valid_ones(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tiny:\n  alhpa: 2.0\n")
    with pytest.raises(pipeline.ProfileError) as e:
        pipeline.load_profile(path, notebook_dir=nbs)
    msg = str(e.value)
    assert str(path) in msg and "'00_tiny'" in msg and "'alhpa'" in msg and "did you mean 'alpha'" in msg
    assert "layers" in msg and "run_dir" not in msg.split("valid:")[1]


def test_common_key_unknown_to_every_notebook_is_an_error(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "common:\n  sede: 1\n")
    with pytest.raises(pipeline.ProfileError, match=r"section 'common', key 'sede': no notebook has it"):
        pipeline.load_profile(path, notebook_dir=nbs)


def test_common_key_goes_only_to_the_notebooks_that_have_it(tiny, tmp_path):
    nbs, _ = tiny
    spec = pipeline.load_profile(_profile(tmp_path, "common:\n  only_here: 5\n  n: 7\n"), notebook_dir=nbs)
    tiny_params = pipeline.notebook_parameters(spec, nbs / "00_tiny.ipynb", "p", "somewhere")
    other_params = pipeline.notebook_parameters(spec, nbs / "01_other.ipynb", "p", "somewhere")
    assert "only_here" not in tiny_params and tiny_params["n"] == 7
    assert other_params["only_here"] == 5 and other_params["n"] == 7


def test_pipeline_set_parameters_cannot_come_from_a_profile(tiny, tmp_path):
    nbs, _ = tiny
    with pytest.raises(pipeline.ProfileError, match=r"key 'run_dir': run_dir is set by the pipeline"):
        pipeline.load_profile(_profile(tmp_path, "00_tiny:\n  run_dir: elsewhere\n"), notebook_dir=nbs)


def test_alpha_1e_minus_3_is_accepted_as_a_float(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tiny:\n  alpha: 1e-3\n")
    assert isinstance(yaml.safe_load(path.read_text())["00_tiny"]["alpha"], str)  # YAML 1.1 reads a string
    spec = pipeline.load_profile(path, notebook_dir=nbs)
    assert spec["00_tiny"]["alpha"] == pytest.approx(0.001) and isinstance(spec["00_tiny"]["alpha"], float)
    as_int = pipeline.load_profile(_profile(tmp_path, "00_tiny:\n  alpha: 2\n"), notebook_dir=nbs)
    assert as_int["00_tiny"]["alpha"] == 2.0  # an int is fine where a float is expected


def test_string_where_a_float_is_expected_is_rejected_naming_notebook_parameter_value_type(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tiny:\n  alpha: abc\n")
    with pytest.raises(pipeline.ProfileError) as e:
        pipeline.load_profile(path, notebook_dir=nbs)
    msg = str(e.value)
    assert str(path) in msg and "00_tiny.ipynb" in msg and "'alpha'" in msg and "'abc'" in msg
    assert "expects a float" in msg


def test_wrong_types_in_ints_bools_and_list_elements_are_rejected(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tiny:\n  n: 2.5\n  fail: 1\n  layers: [0, x]\n  name:\n")
    with pytest.raises(pipeline.ProfileError) as e:
        pipeline.load_profile(path, notebook_dir=nbs)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "key 'n' = 2.5 is a float, but 00_tiny.ipynb expects an int" in msg
    assert "key 'fail' = 1 is an int, but 00_tiny.ipynb expects a bool" in msg
    assert "key 'layers'[1] = 'x' is a str, but 00_tiny.ipynb expects an int" in msg
    assert "key 'name' has no value" in msg


def test_duplicate_keys_are_an_error_naming_file_key_and_lines(tiny, tmp_path):
    nbs, _ = tiny
    path = _profile(tmp_path, "00_tiny:\n  alpha: 1.0\n  n: 2\n  alpha: 3.0\n")
    with pytest.raises(pipeline.ProfileError) as e:
        pipeline.load_profile(path, notebook_dir=nbs)
    msg = str(e.value)
    assert str(path) in msg and "line 4" in msg and "line 2" in msg and "key 'alpha' appears twice" in msg
    assert "section '00_tiny'" in msg
    twice = _profile(tmp_path, "00_tiny:\n  n: 1\n00_tiny:\n  n: 2\n", "q.yaml")
    with pytest.raises(pipeline.ProfileError, match=r"line 3: top level \(sections\), key '00_tiny' appears twice"):
        pipeline.load_profile(twice, notebook_dir=nbs)


def test_every_shipped_profile_passes_the_checks():
    for prof in sorted(pipeline.PARAMS_DIR.glob("*.yaml")):
        pipeline.load_profile(prof.stem)  # raises on a problem


def test_only_with_no_names_is_an_error(tiny, tmp_path, capsys):
    nbs, root = tiny
    path = _profile(tmp_path, "00_tiny:\n  n: 1\n")
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--profile", str(path), "--notebook-dir", str(nbs), "--runs-root", str(root), "--only"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--only needs at least one notebook stem" in err and "00_tiny, 01_other" in err
    assert not root.exists()  # nothing ran


def test_main_exits_with_the_profile_error_before_any_notebook_runs(tiny, tmp_path):
    nbs, root = tiny
    path = _profile(tmp_path, "00_tiny:\n  alpha: abc\n")
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--profile", str(path), "--notebook-dir", str(nbs), "--runs-root", str(root)])
    assert str(path) in str(e.value.code) and "'alpha'" in str(e.value.code)
    assert not root.exists()


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_rerun_keeps_the_last_good_run_byte_identical_and_writes_failed(tiny):
    nbs, root = tiny
    good = pipeline.execute(nbs / "00_tiny.ipynb", "p", {"00_tiny": {"alpha": 2.0}}, runs_root=root)
    assert good == root / "p" / "00_tiny" / "00_tiny.ipynb"
    before = _files(good.parent)
    assert {"00_tiny.ipynb", "metrics.json", "line.png", "artefacts.json"} <= set(before)
    assert runs.read_metrics(good.parent)["alpha"] == 2.0
    # the artefact path names the final folder, not the .running one it was written from
    assert runs.read_artefacts(good.parent)["table"] == str(root / "p" / "00_tiny" / "table.txt")

    with pytest.raises(pipeline.NotebookFailed) as e:
        pipeline.execute(nbs / "00_tiny.ipynb", "p", {"00_tiny": {"alpha": 5.0, "fail": True}}, runs_root=root)
    failed = root / "p" / "00_tiny.failed"
    assert e.value.failed_dir == failed and "boom in the tiny notebook" in str(e.value)
    assert _files(good.parent) == before  # notebook, metrics, figure: byte-identical
    assert (failed / "00_tiny.ipynb").is_file() and runs.read_metrics(failed)["alpha"] == 5.0
    assert pipeline.last_error_line(failed) == "ValueError: boom in the tiny notebook"
    assert not (root / "p" / "00_tiny.running").exists()

    pipeline.execute(nbs / "00_tiny.ipynb", "p", {"00_tiny": {"alpha": 3.0}}, runs_root=root)
    assert runs.read_metrics(good.parent)["alpha"] == 3.0 and not failed.exists()  # success clears the failure


def test_metrics_are_not_merged_across_runs(tiny):
    nbs, root = tiny
    first = pipeline.execute(nbs / "00_tiny.ipynb", "p", {"00_tiny": {"name": "a"}}, runs_root=root)
    assert runs.read_metrics(first.parent)["run_a"] == 1  # two write_metrics calls in one run merge
    second = pipeline.execute(nbs / "00_tiny.ipynb", "p", {"00_tiny": {"name": "b"}}, runs_root=root)
    metrics = runs.read_metrics(second.parent)
    assert metrics["run_b"] == 1 and "run_a" not in metrics and metrics["name"] == "b"


def test_index_marks_a_failed_notebook_and_the_run_stops(tiny, tmp_path, capsys):
    nbs, root = tiny
    ok = _profile(tmp_path, "00_tiny:\n  n: 1\n")
    assert pipeline.main(["--profile", str(ok), "--notebook-dir", str(nbs), "--runs-root", str(root)]) == 0
    timing = json.loads((root / "p" / "run_seconds.json").read_text())  # a complete run records its wall time
    assert timing["make_run_seconds"] > 0 and set(timing["notebook_seconds"]) == {"00_tiny", "01_other"}
    (root / "p" / "run_seconds.json").unlink()
    bad = _profile(tmp_path, "00_tiny:\n  fail: true\n", "p.yaml")  # same profile name: reruns into runs/p
    other_before = _files(root / "p" / "01_other")
    assert pipeline.main(["--profile", str(bad), "--notebook-dir", str(nbs), "--runs-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: ValueError: boom in the tiny notebook" in out and "not run: an earlier notebook failed" in out
    assert "make run took" in out.splitlines()[-1]
    assert _files(root / "p" / "01_other") == other_before  # a later notebook is not run on a failed input
    index = (root / "p" / "index.html").read_text()
    assert "FAILED" in index and "ValueError: boom in the tiny notebook" in index
    assert "href='00_tiny.failed/00_tiny.html'" in index and (root / "p" / "00_tiny.failed" / "00_tiny.html").is_file()
    assert "href='00_tiny/00_tiny.html'" in index and "href='01_other/01_other.html'" in index
    assert not (root / "p" / "run_seconds.json").exists()  # a failed run records no wall time


def test_headline_prefers_the_listed_keys_and_keeps_at_most_ten():
    many = {f"m{i:02d}": i for i in range(20)}
    assert list(pipeline.headline(many)) == [f"m{i:02d}" for i in range(10)]
    assert list(pipeline.headline({**many, "headline": ["m15", "m03", "gone"]})) == ["m15", "m03"]


def test_write_artefacts_is_atomic_and_read_artefacts_of_a_missing_run_is_an_error(tmp_path):
    path = runs.write_artefacts(tmp_path / "r", a="x")
    runs.write_artefacts(tmp_path / "r", b="y")
    assert json.loads(path.read_text()) == {"a": "x", "b": "y"} and not list((tmp_path / "r").glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="run that notebook first"):
        runs.read_artefacts(tmp_path / "never_ran")
    assert not (tmp_path / "never_ran").exists()  # reading does not create the folder


def test_files_of_a_killed_run_never_mix_into_the_next(tiny):
    nbs, root = tiny
    stale = root / "p" / "00_tiny.running"
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text('{"stale_key": 1}')
    out = pipeline.execute(nbs / "00_tiny.ipynb", "p", {}, runs_root=root)
    assert "stale_key" not in runs.read_metrics(out.parent) and not stale.exists()


# ---------------------------------------------------------------------------------------------- SAEs
import shutil as _shutil  # noqa: E402

from steerlab.sae import io as sae_io  # noqa: E402

SHIPPED = sae_io.SAE_DIR / "tinyworld"


@pytest.fixture
def sae_copy(tmp_path):
    """A copy of the shipped tinyworld SAEs (a folder of per-hook folders with its training.json)."""
    dst = tmp_path / "saes"
    _shutil.copytree(SHIPPED, dst)
    return dst


def test_an_sae_in_the_folder_of_another_layer_is_refused(sae_copy):
    one, two = sae_copy / "blocks.1.hook_resid_post", sae_copy / "blocks.2.hook_resid_post"
    _shutil.rmtree(two)
    _shutil.copytree(one, two)
    with pytest.raises(ValueError, match=r"(?s)blocks.2.hook_resid_post reads 'blocks.1.hook_resid_post'.*"
                                         r"asked to serve 'blocks.2.hook_resid_post'"):
        sae_io.load_sae(sae_copy, layer=2)


def test_an_sae_of_another_width_than_its_recipe_is_refused_without_a_model(sae_copy):
    import json as _json

    rec = sae_copy / "training.json"
    spec = _json.loads(rec.read_text())
    spec["config"]["d_sae"] = 1024
    rec.write_text(_json.dumps(spec))
    with pytest.raises(ValueError, match=r"has d_sae=512 but .*training.json says d_sae=1024"):
        sae_io.load_sae(sae_copy, layer=2)


def test_a_corrupt_sae_cfg_names_the_file(sae_copy):
    cfg = sae_copy / "blocks.2.hook_resid_post" / "cfg.json"
    cfg.write_text("{ not json")
    with pytest.raises(ValueError, match=r"cfg.json is not valid JSON"):
        sae_io.load_sae(sae_copy, layer=2)


def test_truncated_sae_weights_name_the_file(sae_copy):
    w = sae_copy / "blocks.2.hook_resid_post" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"sae_weights.safetensors is truncated or corrupt"):
        sae_io.load_sae(sae_copy, layer=2)


def test_sae_weights_that_disagree_with_the_cfg_name_both_files(sae_copy):
    import json as _json

    cfg = sae_copy / "blocks.2.hook_resid_post" / "cfg.json"
    spec = _json.loads(cfg.read_text())
    spec["d_in"] = 64
    cfg.write_text(_json.dumps(spec))
    with pytest.raises(ValueError, match=r"sae_weights.safetensors does not match .*cfg.json"):
        sae_io.load_sae(sae_copy, layer=2)


def test_a_misspelt_sae_architecture_lists_the_known_ones(sae_copy):
    import json as _json

    cfg = sae_copy / "blocks.2.hook_resid_post" / "cfg.json"
    spec = _json.loads(cfg.read_text())
    spec["architecture"] = "topkk"
    cfg.write_text(_json.dumps(spec))
    with pytest.raises(ValueError, match=r"names architecture 'topkk'.*'topk'"):
        sae_io.load_sae(sae_copy, layer=2)


def test_an_sae_that_does_not_fit_the_model_is_refused_on_load(sae_copy):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    other = HookedTransformer(HookedTransformerConfig(n_layers=3, d_model=64, n_ctx=16, d_head=16, n_heads=4,
                                                      d_vocab=50, act_fn="gelu", model_name="other"))
    with pytest.raises(ValueError, match=r"d_in=128 but 'blocks.2.hook_resid_post' of this model is 64 wide"):
        sae_io.load_sae(sae_copy, layer=2, model=other)
    with pytest.raises(ValueError, match=r"reads 'blocks.3.hook_resid_post', which this model does not have"):
        sae_io.load_sae(sae_copy, layer=3, model=other)


# ------------------------------------------------------------------------------- steering inputs
import math as _math  # noqa: E402
import re as _re  # noqa: E402
import time as _time  # noqa: E402

import numpy as _np  # noqa: E402
import torch  # noqa: E402

from steerlab.control import policy as control  # noqa: E402
from steerlab.core import hooks, run  # noqa: E402
from steerlab.steer import decoding, features, registry, spare, vectors  # noqa: E402
from test_hooks import HOOK, tiny_sae  # noqa: E402

PROMPT = "question : x color ? answer :"


def _no_hooks_left(model):
    return not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_a_hook_name_the_model_lacks_names_it_and_the_closest_ones(tinyworld):
    model, _ = tinyworld
    v = torch.ones(model.cfg.d_model)
    typo, far = "blocks.2.hook_resid_prex", "blocks.99.hook_resid_post"
    with pytest.raises(hooks.HookNameError) as e:
        run.next_words(model, [PROMPT], hooks.add_vector(typo, v, 1.0))
    msg = str(e.value)
    assert f"no hook {typo!r}" in msg and "did you mean 'blocks.2.hook_resid_pre'" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, KeyError)  # old `except KeyError` still works
    for call in (lambda: run.complete(model, [PROMPT], 2, hooks.add_vector(far, v, 1.0)),  # generation
                 lambda: vectors.actadd_vector(model, far, PROMPT, PROMPT),  # caching
                 lambda: decoding.greedy(model, [], hooks.add_vector(far, v, 1.0)),
                 lambda: registry.build("actadd", model, hook_name=far, vector=v)):  # the registry, at build
        with pytest.raises(hooks.HookNameError, match=rf"no hook '{far}'.*layers are 0..{model.cfg.n_layers - 1}"):
            call()
    assert _no_hooks_left(model)


def test_a_nan_or_inf_strength_is_an_error_naming_the_parameter():
    sae, v = tiny_sae(), torch.ones(128)
    for bad in (float("nan"), float("inf"), -_math.inf):
        for call, name in ((lambda: hooks.add_vector(HOOK, v, bad), "coeff"),
                           (lambda: features.amplify(HOOK, sae, [0], bad), "alpha"),
                           (lambda: features.calibrate(HOOK, sae, [0], bad), "beta"),
                           (lambda: features.clamp(HOOK, sae, [0], bad), "value"),
                           (lambda: features.add(HOOK, sae, [0], bad), "strength"),
                           (lambda: spare.spare_hooks([], {}, bad), "alpha"),
                           (lambda: control.feature_hooks(sae, 1, 0, bad), "coef"),
                           (lambda: registry.build("amplify", None, {HOOK: sae}, hook_name=HOOK, features=[0])
                            .hooks(bad), "strength"),
                           (lambda: registry.build("meandiff", hook_name=HOOK, vector=v).hooks(bad), "strength"),
                           (lambda: registry.build("cad", free_prompt=lambda e: e).answer([], bad), "strength")):
            with pytest.raises(ValueError, match=rf"{name}={bad!r}: a steering strength must be finite"):
                call()
    with pytest.raises(ValueError, match=r"steering vector for 'blocks.1.hook_resid_post' holds NaN"):
        hooks.add_vector(HOOK, torch.full((128,), float("nan")), 1.0)
    with pytest.raises(ValueError, match=r"ControlConfig.coef=nan"):
        control.ControlConfig(coef=float("nan"))


def test_a_negative_strength_is_legal_and_steers_the_other_way(tinyworld):
    model, _ = tinyworld
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def resid(fwd_hooks=()):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            _, cache = model.run_with_cache(model.to_tokens(PROMPT), names_filter=HOOK)
        return cache[HOOK]

    base = resid()
    up, down = resid(hooks.add_vector(HOOK, v, 2.0)) - base, resid(hooks.add_vector(HOOK, v, -2.0)) - base
    assert torch.allclose(down, -up, atol=1e-4) and up.abs().max() > 1


def test_feature_ids_must_be_integers_in_range_0_d_sae():
    sae = tiny_sae(d_sae=8)
    for bad in (-1, 2.7, 8, True, "3", 2.0):
        for call in (lambda: features.amplify(HOOK, sae, [0, bad], 1.0),
                     lambda: features.read_features(sae, torch.zeros(128), [bad]),
                     lambda: registry.build("add", None, {HOOK: sae}, hook_name=HOOK, features=[bad]).hooks(1.0),
                     lambda: control.feature_hooks(sae, 1, bad, 1.0)):
            with pytest.raises(ValueError, match=rf"feature id {_re.escape(repr(bad))} .* integers in \[0, 8\)"):
                call()
    assert len(features.add(HOOK, sae, [_np.int64(7), torch.tensor(0)], 1.0)) == 2  # numpy / tensor ints are fine


def test_a_prompt_longer_than_the_context_names_its_length_and_the_context(tinyworld):
    model, world = tinyworld
    long_prompt = " ".join([world.entities[0]] * (model.cfg.n_ctx + 5))
    n = model.to_tokens(long_prompt, truncate=False).shape[1]
    assert n > model.cfg.n_ctx
    pattern = rf"a prompt of {n} tokens exceeds the model's context of {model.cfg.n_ctx} tokens"
    with pytest.raises(ValueError, match=pattern):
        run.next_words(model, [long_prompt])
    with pytest.raises(ValueError, match=rf"a prompt of {n} tokens plus 3 to generate exceeds"):
        decoding.greedy(model, [_Ex(long_prompt, 3)])  # the decoder ICL and CAD answer with


class _Ex:
    def __init__(self, prompt, max_new_tokens):
        self.prompt, self.max_new_tokens = prompt, max_new_tokens


# ------------------------------------------------------------------------------- atomic checkpoints
def _fail_weights_write(monkeypatch, module, at: int):
    """Make ``module.save_file`` (the safetensors writer) write its first ``at - 1`` files, then half of the next
    one and raise, as a full disk or a kill would."""
    real, calls = module.save_file, []

    def save_file(tensors, path, *a, **kw):
        calls.append(path)
        real(tensors, path, *a, **kw)
        if len(calls) == at:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", save_file)
    return calls


def test_an_interrupted_sae_retrain_leaves_the_old_saes_and_recipe(sae_copy, tinyworld, monkeypatch):
    import dataclasses

    import sae_lens.saes.sae as saelens_sae

    from steerlab.sae import train

    model, world = tinyworld
    before = _files(sae_copy)
    cfg = train.SAETrainConfig(layers=(1, 2), d_sae=64, k=8, training_tokens=2048, batch_tokens=512,
                               n_batches_in_buffer=64, log_every=2)
    rows = train.token_rows(world.training_stream(0), model.tokenizer, 100, cfg.context_size)
    calls = _fail_weights_write(monkeypatch, saelens_sae, at=2)
    with pytest.raises(OSError, match="No space left"):
        train.train_saes(model, rows, cfg, sae_copy)
    assert len(calls) == 2  # layer 1 was saved, layer 2 died half-written
    assert _files(sae_copy) == before  # every SAE folder and training.json byte-identical
    assert sae_io.load_sae(sae_copy, layer=2, model=model).cfg.d_sae == 512
    assert train.load_recipe(sae_copy) == train.load_recipe("tinyworld")
    assert sorted(p.name for p in sae_copy.parent.iterdir()) == ["saes"]  # no staging folder left
    monkeypatch.undo()
    one = dataclasses.replace(cfg, layers=(2,))
    done = train.train_saes(model, rows, one, sae_copy)  # a retrain that succeeds replaces them
    assert done.paths[2] == sae_copy / "blocks.2.hook_resid_post"
    assert sae_io.load_sae(sae_copy, layer=2, model=model).cfg.d_sae == 64 and train.load_recipe(sae_copy) == one
    assert _files(sae_copy / "blocks.3.hook_resid_post") == _files(SHIPPED / "blocks.3.hook_resid_post")  # kept


def test_an_interrupted_policy_save_leaves_the_old_policy(tmp_path, monkeypatch):
    from control_fixtures import tiny_sae as control_sae

    sae = control_sae(1)
    cfg = control.ControlConfig(layers=(1,), d_model=32, d_sae=16, d_hidden=8)
    old, new = control.new_policy(cfg, sae, seed=0), control.new_policy(cfg, sae, seed=1)
    path = control.save_policy(old, tmp_path / "policy", history=[1.0])
    before = _files(path)
    _fail_weights_write(monkeypatch, control, at=1)  # the weights of the new policy die half-written
    with pytest.raises(OSError, match="No space left"):
        control.save_policy(new, path, history=[2.0])
    assert _files(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    loaded = control.load_policy(path, sae=sae)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))
    monkeypatch.undo()
    control.save_policy(new, path, history=[2.0])
    assert json.loads((path / "cfg.json").read_text())["history"] == [2.0]


# ------------------------------------------------------------------------------- devices and model sources
def test_a_device_that_is_not_here_is_a_clear_error(monkeypatch):
    from steerlab.models import load_model, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"device='{device}' but torch sees no CUDA GPU.*use device='cpu'"):
            load_model("tinyworld", device=device)
    with pytest.raises(RuntimeError, match=r"device='mps' but MPS is not available here; use device='cpu'"):
        resolve_device("mps")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match=r"device='tpu'; use one of"):
        resolve_device("tpu")


def test_a_model_path_that_does_not_exist_says_so(tmp_path):
    from steerlab.models import load_model

    for name, what in ((str(tmp_path / "nowhere"), "no model at"), ("models/nowhere", "no model at"),
                       (str(tmp_path / "m.gguf"), "no GGUF file at")):
        with pytest.raises(FileNotFoundError, match=rf"{what} '?{_re.escape(name)}'?: (that|the) path does not"):
            load_model(name)


def test_a_hub_name_offline_fails_at_once(tmp_path, monkeypatch):
    from steerlab.models import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = _time.perf_counter()
    with pytest.raises(ConnectionError, match=r"(?s)could not load 'gpt2-small': HF_HUB_OFFLINE is set.*HF_HOME"):
        load_model("gpt2-small", allow_download=True)  # asked to download, but offline mode is set: no retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ConnectionError, match=r"(?s)'gpt2-small'.*local Hugging Face cache only.*allow_download"):
        load_model("gpt2-small")  # the default never asks the hub
    assert _time.perf_counter() - start < 10, "the offline error should come at once, without a retry loop"


# ------------------------------------------------------------------------------- the README's table
# tests of this file that back no row of the README's troubleshooting table (supporting checks)
NOT_IN_README = {"test_common_key_goes_only_to_the_notebooks_that_have_it",
                 "test_every_shipped_profile_passes_the_checks",
                 "test_headline_prefers_the_listed_keys_and_keeps_at_most_ten",
                 "test_write_artefacts_is_atomic_and_read_artefacts_of_a_missing_run_is_an_error",
                 "test_the_readme_troubleshooting_table_lists_exactly_these_tests"}


def _troubleshooting_rows():
    """``[(what you do, [test names])]`` from the table of the README's ``## Troubleshooting`` section."""
    text = (runs.REPO_ROOT / "README.md").read_text()
    assert "\n## Troubleshooting\n" in text, "README.md has no '## Troubleshooting' section"
    section = text.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")][2:]  # past the header and the |---| line
    rows = []
    for ln in lines:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert len(cells) == 3, f"README troubleshooting row needs 3 cells: {ln}"
        rows.append((cells[0], ["test_" + n for n in _re.findall(r"`(\w+)`", cells[2])]))  # names less test_
    return rows


def test_the_readme_troubleshooting_table_lists_exactly_these_tests():
    rows = _troubleshooting_rows()
    assert 10 <= len(rows) <= 22, "keep the README table short"
    here = {name for name, f in globals().items() if name.startswith("test_") and callable(f)}
    for what, tests in rows:
        assert tests, f"the README row {what!r} names no test"
        missing = [t for t in tests if t not in here]
        assert not missing, f"the README row {what!r} names tests that tests/test_bad_inputs.py lacks: {missing}"
    listed = {t for _, tests in rows for t in tests}
    unlisted = sorted(here - listed - NOT_IN_README)
    assert not unlisted, f"add these tests to a row of the README's troubleshooting table (or to NOT_IN_README): " \
                         f"{unlisted}"
    assert not listed & NOT_IN_README
