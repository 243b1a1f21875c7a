"""Every notebook runs with papermill at smoke-size parameters and writes the metric keys that the committed
full run (results/default/) has."""

import json

import pytest

from steerlab import pipeline
from steerlab.core.runs import REPO_ROOT, read_metrics

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# smoke profile -> the committed full run whose metric keys it must reproduce
PROFILES = {"smoke": "default", "gemma-smoke": "gemma"}
CASES = [(p, n) for p in PROFILES for n in NOTEBOOKS]


@pytest.mark.parametrize("profile,notebook", CASES, ids=[f"{p}-{n.stem}" for p, n in CASES])
def test_notebook_runs_at_smoke_size(profile, notebook):
    """Notebooks of one profile run in order (a later one reads the run folders of earlier ones)."""
    executed = pipeline.execute(notebook, profile, pipeline.load_profile(profile))
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    metrics = read_metrics(executed.parent)
    committed = REPO_ROOT / "results" / PROFILES[profile] / f"{notebook.stem}.metrics.json"
    if PROFILES[profile] == "default":
        assert committed.is_file(), f"results/default has no metrics for {notebook.stem}: run `make results`"
    if committed.is_file():
        keys = set(json.loads(committed.read_text()))
        if PROFILES[profile] != "default":  # a smoke run skips the full run's costly extras (RLVR, the learned
            # ceiling on Gemma): it must write the keys of that profile's target rows, and those their targets name
            keys &= _target_keys(PROFILES[profile], notebook.stem)
        missing = keys - set(metrics)
        assert not missing, f"{profile} run of {notebook.stem} lacks metric keys {sorted(missing)}"


def _target_keys(profile: str, stem: str) -> set[str]:
    import re

    from steerlab import report

    rows = [r for r in report.load_targets().get(profile, []) if r["notebook"] == stem]
    return {r["key"] for r in rows} | {w for r in rows for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", r["target"] or "")}


def test_notebooks_are_committed_without_outputs_and_have_one_parameters_cell():
    for nb_path in NOTEBOOKS:
        cells = json.loads(nb_path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), nb_path.name
        # nbformat 4.5 cells need an id; a cell without one warns now and will be an error in later nbformat
        assert all(c.get("id") for c in cells), f"{nb_path.name}: a cell has no id"


def test_papermill_can_read_every_parameter():
    """papermill's inspector skips a line with two '=' (e.g. one in its comment): the parameter then vanishes
    from `papermill --help-notebook` and every profile that sets it warns 'unknown parameter'."""
    import papermill

    for nb_path in NOTEBOOKS:
        cells = json.loads(nb_path.read_text())["cells"]
        src = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
        names = {line.split("=")[0].strip() for line in src.splitlines() if "=" in line and not line.startswith((" ", "#"))}
        found = set(papermill.inspect_notebook(str(nb_path)))
        assert names <= found, f"{nb_path.name}: papermill cannot read {sorted(names - found)}"


def test_profiles_only_name_existing_notebooks():
    stems = {n.stem for n in NOTEBOOKS}
    for prof in (REPO_ROOT / "params").glob("*.yaml"):
        spec = pipeline.load_profile(prof.stem)
        assert set(spec) - {"common"} <= stems, f"{prof.name} names unknown notebooks"
