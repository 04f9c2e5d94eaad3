"""The analysis report: every table, statistic and figure written and logged to one analysis run, and the one-line
errors of requests it cannot answer; error bars stay inside a fraction's bounds."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.figures import bounded_spread, plot_boxes, spread
from analysis.query import downstream_results
from analysis.report import analyze
from analysis.stats import drops
from analysis.tables import markdown_table, summary
from cyto_ssrl.cli import main
from cyto_ssrl.errors import CytoError
from entrypoints.analyze import run

from .helpers import analysis_runs, simclr_linear_b10_at_1_100


def test_analyze_writes_every_output_and_logs_it_to_one_analysis_run(study, tmp_path):
    metrics = ("acc", "auc")  # two of the six keep the test fast; each metric's outputs come from one function
    output = analyze("s1", tmp_path / "out", ratio="1:10", metrics=metrics)
    written = sorted(path.relative_to(output).as_posix() for path in output.rglob("*") if path.is_file())
    per_metric = [
        f"{folder}/{kind}_{m}{suffix}"
        for m in metrics
        for folder, kind, suffix in (
            ("figures", "curves", ".png"),
            ("tables", "table", ".md"),
            ("tables", "table", ".csv"),
            ("stats", "stats", ".md"),
            ("stats", "stats", ".csv"),
            ("stats", "baseline", ".md"),  # s1's MAE has a baseline
            ("stats", "baseline", ".csv"),
        )
    ]
    boxes = [f"figures/boxplot_{m}_1-10.png" for m in metrics]
    assert written == sorted(
        [
            "tables/results.csv",
            "tables/representation.md",
            "tables/representation.csv",
            "README.md",
            *per_metric,
            *boxes,
        ]
    )
    representation = pd.read_csv(output / "tables" / "representation.csv")
    assert representation[["method", "ratio", "knn_best_weighted_f1", "kmeans_ami"]].values.tolist() == [
        ["mae", "1:10", 0.8, 0.3]
    ]
    assert all((output / name).stat().st_size > 0 for name in written)
    [analysis] = analysis_runs()
    assert analysis.info.status == "FINISHED" and analysis.data.tags["study"] == "s1"
    assert analysis.data.params["ratio"] == "1:10" and analysis.data.params["study"] == "s1"
    logged = sorted(
        a.path
        for folder in ("", "figures", "tables", "stats")
        for a in MlflowClient().list_artifacts(analysis.info.run_id, folder or None)
        if not a.is_dir
    )
    ui_tables = [
        f"{folder}/{name}.json"
        for folder, name in [
            ("tables", "representation"),
            *[
                (folder, f"{kind}_{m}")
                for m in metrics
                for folder, kind in (("tables", "table"), ("stats", "stats"), ("stats", "baseline"))
            ],
        ]
    ]
    assert logged == sorted([*written, *ui_tables])  # the Markdown tables also as tables the UI renders
    readme = (output / "README.md").read_text()
    assert "84 finished downstream runs" in readme and "figures/curves_acc.png, figures/curves_auc.png" in readme
    # Headline numbers as metrics: the drop from 1:1 to 1:100 per method x mode x budget, and its p-value.
    stats = drops(downstream_results("s1"), "acc")
    row = simclr_linear_b10_at_1_100(stats)
    key = "simclr-resnet18-linear-b10"
    assert analysis.data.metrics[f"drop_acc/{key}"] == pytest.approx(row["drop_pp"])
    assert analysis.data.metrics[f"p_acc/{key}"] == pytest.approx(row["p_value"])


def test_one_ratio_study_without_baseline_still_gives_every_output(study, tmp_path):
    output = analyze("s2", tmp_path / "s2", metrics=("acc",))
    assert (output / "figures" / "curves_acc.png").exists() and (output / "figures" / "boxplot_acc_1-5.png").exists()
    assert (output / "stats" / "stats_acc.csv").read_text().splitlines()[1:] == []  # one ratio: no drop to test
    assert not (output / "stats" / "baseline_acc.csv").exists()  # no baseline: no table
    assert "no external baseline" in plot_boxes(downstream_results("s2"), "acc", 5, "s2").get_suptitle()
    table = markdown_table(summary(downstream_results("s2"), "acc"))
    assert list(table.columns[4:]) == ["1:5"]


def test_a_study_without_runs_or_a_ratio_it_lacks_is_a_one_line_error(study, tmp_path, monkeypatch, capsys):
    with pytest.raises(CytoError, match="no finished downstream runs for study nope in sqlite:///"):
        downstream_results("nope")
    with pytest.raises(CytoError, match="ratio 1:7 has no downstream runs in study s1; it has 1:1, 1:10, 1:100"):
        analyze("s1", tmp_path / "out", ratio="1:7")
    assert not analysis_runs()  # nothing was logged for a request that cannot be answered
    monkeypatch.setattr(sys, "argv", ["analyze", "--study", "nope", "--output", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as exit_info:
        main(run)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: no finished downstream runs for study nope")


def test_error_bars_stop_at_the_bounds_of_a_fraction():
    rows = pd.DataFrame({"ratio_r": [1, 1, 10, 10], "auc": [0.90, 0.09, 0.60, 0.70]})
    stats = spread(rows, "ratio_r", "auc")
    below, above = bounded_spread(stats)
    assert stats.loc[1, "std"] > stats.loc[1, "mean"]  # 49.5 ± 57.3 would cross both 0 and 100
    assert below[1] == pytest.approx(stats.loc[1, "mean"]) and above[1] == pytest.approx(100 - stats.loc[1, "mean"])
    assert below[10] == pytest.approx(stats.loc[10, "std"]) == above[10]  # inside the bounds: mean ± std
