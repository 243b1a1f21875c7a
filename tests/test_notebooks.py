"""Every notebook runs with papermill at smoke-size parameters and writes the metric keys that the committed
full run (results/default/) has."""

import json

import pytest

from steerlab import pipeline
from steerlab.core.runs import REPO_ROOT, read_metrics

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def smoke_spec():
    return pipeline.load_profile("smoke")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_at_smoke_size(notebook, smoke_spec):
    executed = pipeline.execute(notebook, "smoke", smoke_spec)
    nb = json.loads(executed.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    metrics = read_metrics(executed.parent)
    committed = REPO_ROOT / "results" / "default" / f"{notebook.stem}.metrics.json"
    assert committed.is_file(), f"results/default has no metrics for {notebook.stem}: run `make results`"
    missing = set(json.loads(committed.read_text())) - set(metrics)
    assert not missing, f"smoke run of {notebook.stem} lacks metric keys {sorted(missing)}"


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
