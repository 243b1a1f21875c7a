"""The results table: targets evaluated on results/, and the README's table equal to what is generated."""

import json

import pytest

from steerlab import report


def _results(tmp_path, metrics, targets):
    (tmp_path / "default").mkdir(exist_ok=True)
    (tmp_path / "default" / "03_steering.metrics.json").write_text(json.dumps(metrics))
    t = tmp_path / "targets.yaml"
    t.write_text(targets)
    return report.evaluate(tmp_path, t)


def test_targets_compare_against_numbers_other_keys_and_expressions(tmp_path):
    rows = _results(tmp_path, {"spare_em_c": 0.6, "none_em_c": 0.5, "actadd_em_c": 0.7, "asr_before": 0.9,
                               "asr_after": 0.2, "random_em_c_seed0": 0.4, "random_em_c_seed1": 0.8},
                    "default:\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: '>= 0.80'}\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: '> max(none_em_c, actadd_em_c)'}\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: '> none_em_c'}\n"
                    "  - {notebook: 03_steering, key: asr_after, target: '<= 0.2 * asr_before'}\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: '> mean(\"random_em_c_seed*\")'}\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: '> lacking_key'}\n"
                    "  - {notebook: 03_steering, key: missing, target: '>= 0'}\n"
                    "  - {notebook: 03_steering, key: spare_em_c, target: ''}\n")
    assert [r.status for r in rows] == ["missed", "missed", "met", "missed", "missed", "not measured",
                                        "not measured", "reported"]
    assert rows[1].bound == pytest.approx(0.7) and rows[3].bound == pytest.approx(0.18)
    assert rows[4].bound == pytest.approx(0.6)  # the mean over the globbed seeds; 0.6 > 0.6 is false


def test_a_malformed_target_is_an_error_naming_the_row(tmp_path):
    with pytest.raises(ValueError, match=r"default\[0\].*must start with"):
        _results(tmp_path, {}, "default:\n  - {notebook: 03_steering, key: a, target: '0.8'}\n")
    with pytest.raises(ValueError, match=r"default\[0\].*fields"):
        _results(tmp_path, {}, "default:\n  - {notebook: 03_steering, key: a, tagret: '>= 1'}\n")


def test_a_notebooks_closing_table_has_its_targets_then_its_headline_figures(tmp_path):
    t = tmp_path / "targets.yaml"
    t.write_text("default:\n"
                 "  - {notebook: 03_steering, key: spare_em_c, target: '> none_em_c', label: SPARE}\n"
                 "  - {notebook: 02_mi_explanations, key: mi_precision_at_10, target: '>= 0.5'}\n")
    metrics = {"spare_em_c": 0.61234, "none_em_c": 0.7, "asr_before": 0.987, "table": [1, 2],
               "headline": ["asr_before", "spare_em_c", "table"]}
    df = report.headline_table("03_steering", metrics, "smoke", targets=t)  # smoke: the default's rows
    assert list(df.index) == ["SPARE", "asr_before"]
    assert df.loc["SPARE"].tolist() == ["spare_em_c", "> 0.7", "0.612", "missed"]
    assert df.loc["asr_before", "measured"] == "0.987"


def test_figures_are_rounded_for_a_reader():
    assert [report.fmt(v) for v in (0.123456, 406.43, 1000.0, 3, None, True, 2360.9, 615076.0, -5.55e-17, 0.0371)] == \
        ["0.123", "406", "1000", "3", "–", "yes", "2361", "615076", "0", "0.0371"]


def test_the_committed_readme_table_is_the_generated_one():
    """README.md's results block equals what results/ and results/targets.yaml give now: regenerate it with
    `python -m steerlab.report --write-readme` after `make results`."""
    text = report.README.read_text()
    expected = report.replace_section(text, report.readme_section(report.evaluate()))
    assert text == expected, "README results table is stale: run python -m steerlab.report --write-readme"


def test_every_target_row_names_a_notebook_that_exists():
    stems = {p.stem for p in (report.REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} | {"run"}
    for profile, rows in report.load_targets().items():
        assert {r["notebook"] for r in rows} <= stems, profile


def test_the_report_page_shows_targets_met_or_missed_and_rounds_figures():
    from steerlab import pipeline

    page = pipeline._metrics_html("default", "03_steering", {"spare_em_c": 0.4951234, "spare_em_m": 0.9,
                                                             "none_em_c": 0.3, "asr_before": 0.9, "asr_after": 0.1})
    assert "0.495" in page and "0.4951234" not in page
    assert "<td style='color:#b00000'>missed</td>" in page and "<td style='color:#060'>met</td>" in page
    assert "&lt;= 0.18" in page  # the target's other side, evaluated on the same metrics


def test_the_report_page_asks_each_notebooks_question_and_shows_its_figures(tmp_path):
    import nbformat

    from steerlab import pipeline

    folder = tmp_path / "smoke" / "01_train_sae"
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# 01 · SAEs\n\n**Question.** Do the *SAEs* reconstruct\nthe model?\n\nMore text.")])
    nbformat.write(nb, folder / "01_train_sae.ipynb")
    (folder / "metrics.json").write_text(json.dumps({"explained_variance": 0.97}))
    (folder / "training_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    page = pipeline.render_index("smoke", [], runs_root=tmp_path).read_text()
    assert "<strong>Question.</strong> Do the SAEs reconstruct the model?</p>" in page
    assert "<img src='01_train_sae/training_curves.png'" in page
    assert "More text" not in page
