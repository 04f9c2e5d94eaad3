"""The analysis reads a study's downstream runs from MLflow and writes the paper's tables, statistics and figures.

The runs are fake but shaped like the study's: metric values come from `metric_value`, so every expected number is
computed by hand from it.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy.stats import ttest_rel

from analysis.figures import bounded_spread, plot_boxes, spread
from analysis.query import downstream_results, representation_results
from analysis.report import analyze
from analysis.stats import drops
from analysis.tables import markdown_table, numeric_table, summary
from cyto_ssrl.cli import main
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.errors import CytoError
from entrypoints.analyze import run

METHODS = {"mae": "vit_tiny", "simclr": "resnet18"}  # only vit_tiny has an external baseline
MODES = ("linear", "finetune")
BUDGETS = (100.0, 10.0)
RATIOS = (1, 10, 100)
RESAMPLES = (0, 1, 2)


def metric_value(metric: str, method: str, mode: str, budget: float, r: int, resample: int) -> float:
    """Falls with log10(r) and with fewer labels; resample noise differs between ratios, so pairs differ."""
    base = {"acc": 0.90, "sp": 0.92, "se": 0.85, "pr": 0.88, "f1": 0.86, "auc": 0.95}[metric]
    shift = 0.02 * (mode == "finetune") - 0.04 * (budget < 100) - 0.01 * (method == "simclr")
    pretraining = -0.06 if r == 0 else -0.03 * math.log10(r)  # r = 0: the external baseline
    noise = 0.01 * ((3 * resample + 2 * r % 7) % 5 - 2)
    return base + shift + pretraining + noise


def values(metric: str, method: str, mode: str, budget: float, r: int) -> np.ndarray:
    return np.array([metric_value(metric, method, mode, budget, r, resample) for resample in RESAMPLES])


def log_run(
    client: MlflowClient, experiment: str, tags: dict, params: dict, metrics: dict, status: str = "FINISHED"
) -> None:
    run_id = client.create_run(experiment, tags={"stage": "downstream", **tags}).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run_id, status)


def budget_run(client, experiment, study, method, backbone, r, mode, budget, resample, status="FINISHED", **metrics):
    ratio = "external" if r == 0 else f"1:{r}"
    tags = {
        "study": study,
        "method": method,
        "backbone": backbone,
        "ratio": ratio,
        "ratio_r": r,
        "model_name": f"cyto-{method}-{backbone}",
        "model_version": "1",
    }
    params = {"mode": mode, "budget": f"{budget:g}", "resample": resample, "seed": 0}
    metrics = metrics or {f"eval/{m}": metric_value(m, method, mode, budget, r, resample) for m in METRIC_NAMES}
    log_run(client, experiment, tags, params, metrics, status)


def make_study(client: MlflowClient, experiment: str) -> None:
    """Study s1 (two methods, one with an external baseline), decoys it must ignore, and a one-ratio study s2."""
    for method, backbone in METHODS.items():
        for mode in MODES:
            for budget in BUDGETS:
                for resample in RESAMPLES:
                    for r in RATIOS:
                        budget_run(client, experiment, "s1", method, backbone, r, mode, budget, resample)
                    if backbone == "vit_tiny":
                        budget_run(client, experiment, "s1", "external", backbone, 0, mode, budget, resample)
    # A parent run, a representation run and a pre-training run of s1 carry no budget results.
    log_run(client, experiment, {"study": "s1", "method": "mae"}, {"mode": "linear", "budgets": "100,10"}, {})
    log_run(
        client,
        experiment,
        {"study": "s1", "method": "mae", "backbone": "vit_tiny", "ratio": "1:10", "ratio_r": 10},
        {"mode": "representation"},
        {"representation/knn_best_weighted_f1": 0.8, "representation/kmeans_ami": 0.3},
    )
    log_run(client, experiment, {"study": "s1", "stage": "pretrain"}, {"budget": "100"}, {"eval/acc": 0.1})
    # Failed runs: one repeats a finished cell with a wild value, one is at a ratio nothing finished at.
    budget_run(client, experiment, "s1", "mae", "vit_tiny", 1, "linear", 100.0, 0, "FAILED", **{"eval/acc": 0.0})
    budget_run(client, experiment, "s1", "mae", "vit_tiny", 1000, "linear", 100.0, 0, "FAILED", **{"eval/acc": 0.5})
    for budget in (100.0, 1.0):
        for resample in (0, 1):
            budget_run(client, experiment, "s2", "mae", "vit_tiny", 5, "linear", budget, resample)


def analysis_runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'analysis'")


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> Path:
    """The fake studies' store (about a hundred runs), built once and copied by every test.

    Built in memory (/dev/shm) where there is one: SQLite syncs each of its hundreds of commits to disk otherwise.
    """
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlruns.db'}")
        make_study(client, client.create_experiment("fake-study"))
        return Path(shutil.copy(scratch / "mlruns.db", tmp_path_factory.mktemp("study")))
    finally:
        shutil.rmtree(scratch)


@pytest.fixture
def study(store, study_db) -> str:
    shutil.copy(study_db, store.removeprefix("sqlite:///"))
    return store


def test_results_are_one_tidy_row_per_finished_budget_run_of_the_study(study):
    results = downstream_results("s1")
    assert len(results) == 2 * 2 * 2 * 3 * 3 + 2 * 2 * 3  # pre-trained runs + the external baseline's
    assert list(results.columns[:12]) == [
        "method",
        "backbone",
        "ratio",
        "ratio_r",
        "mode",
        "budget",
        "resample",
        "seed",
        "pretrain_seed",
        "model_version",
        "blr",
        "run_id",
    ]
    assert set(results["ratio_r"]) == {0, 1, 10, 100}
    assert set(results["budget"]) == set(BUDGETS) and results["resample"].dtype.kind == "i"
    first = results.iloc[0]
    assert (first["method"], first["mode"], first["budget"], first["ratio"]) == ("mae", "linear", 100.0, "1:1")
    assert first["acc"] == pytest.approx(metric_value("acc", "mae", "linear", 100.0, 1, 0))


def test_table_cells_are_mean_and_std_over_resamplings_in_percent(study):
    table = markdown_table(summary(downstream_results("s1"), "acc"))
    assert list(table.columns) == ["method", "backbone", "mode", "budget (%)", "1:1", "1:10", "1:100", "external"]
    assert table[["method", "mode", "budget (%)"]].values.tolist()[:4] == [
        ["mae", "linear", "100"],
        ["mae", "linear", "10"],
        ["mae", "finetune", "100"],
        ["mae", "finetune", "10"],
    ]
    row = table[(table["method"] == "mae") & (table["mode"] == "finetune") & (table["budget (%)"] == "10")].iloc[0]
    for column, method, r in (("1:10", "mae", 10), ("external", "external", 0)):
        expected = values("acc", method, "finetune", 10.0, r) * 100
        assert row[column] == f"{expected.mean():.1f} ± {expected.std(ddof=1):.1f}"
    assert (table.loc[table["method"] == "simclr", "external"] == "—").all()  # resnet18 has no baseline
    numeric = numeric_table(summary(downstream_results("s1"), "sp"))
    mae_linear = numeric[(numeric["method"] == "mae") & (numeric["mode"] == "linear") & (numeric["budget"] == 100)]
    expected = values("sp", "mae", "linear", 100.0, 100).mean() * 100
    assert mae_linear["1:100 mean"].item() == pytest.approx(expected, abs=1e-3)  # rounded to 3 decimals


def test_drop_from_balanced_pool_and_p_value_match_a_paired_t_test(study):
    stats = drops(downstream_results("s1"), "f1")
    assert len(stats) == 2 * 2 * 2 * 2  # method x mode x budget x (1:10, 1:100)
    row = stats[
        (stats["method"] == "simclr")
        & (stats["mode"] == "linear")
        & (stats["budget"] == 10)
        & (stats["ratio"] == "1:100")
    ].iloc[0]
    balanced, imbalanced = values("f1", "simclr", "linear", 10.0, 1), values("f1", "simclr", "linear", 10.0, 100)
    p_value = ttest_rel(balanced, imbalanced).pvalue
    assert row["reference"] == "1:1" and row["n_pairs"] == 3
    assert row["drop_pp"] == pytest.approx((balanced - imbalanced).mean() * 100)
    assert row["p_value"] == pytest.approx(p_value)
    assert row["significant"] == (p_value < 0.05) and row["note"] == ""


def test_reference_falls_back_to_the_smallest_ratio_and_few_pairs_get_no_p_value(study):
    results = downstream_results("s1")
    few = results[(results["ratio_r"] > 1) & (results["resample"] < 2)]
    stats = drops(few, "acc")
    assert set(stats["reference"]) == {"1:10"} and set(stats["ratio"]) == {"1:100"}
    assert stats["p_value"].isna().all() and not stats["significant"].any()
    assert stats["note"].str.contains("reference is 1:10").all() and stats["note"].str.contains("no p-value").all()


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
            *[(folder, f"{kind}_{m}") for m in metrics for folder, kind in (("tables", "table"), ("stats", "stats"))],
        ]
    ]
    assert logged == sorted([*written, *ui_tables])  # the Markdown tables also as tables the UI renders
    readme = (output / "README.md").read_text()
    assert "84 finished downstream runs" in readme and "figures/curves_acc.png, figures/curves_auc.png" in readme
    # Headline numbers as metrics: the drop from 1:1 to 1:100 per method x mode x budget, and its p-value.
    stats = drops(downstream_results("s1"), "acc")
    row = stats[
        (stats["method"] == "simclr")
        & (stats["mode"] == "linear")
        & (stats["budget"] == 10)
        & (stats["ratio"] == "1:100")
    ].iloc[0]
    key = "simclr-resnet18-linear-b10"
    assert analysis.data.metrics[f"drop_acc/{key}"] == pytest.approx(row["drop_pp"])
    assert analysis.data.metrics[f"p_acc/{key}"] == pytest.approx(row["p_value"])


def test_one_ratio_study_without_baseline_still_gives_every_output(study, tmp_path):
    output = analyze("s2", tmp_path / "s2", metrics=("acc",))
    assert (output / "figures" / "curves_acc.png").exists() and (output / "figures" / "boxplot_acc_1-5.png").exists()
    assert (output / "stats" / "stats_acc.csv").read_text().splitlines()[1:] == []  # one ratio: no drop to test
    assert "no external baseline" in plot_boxes(downstream_results("s2"), "acc", 5, "s2").get_suptitle()
    table = markdown_table(summary(downstream_results("s2"), "acc"))
    assert list(table.columns[4:]) == ["1:5"]


def test_a_representation_run_without_its_model_tags_is_a_one_line_error(study):
    client = MlflowClient()
    experiment = client.search_experiments()[0].experiment_id
    log_run(
        client,
        experiment,
        {"study": "s3", "method": "mae"},
        {"mode": "representation"},
        {"representation/kmeans_ami": 0.3},
    )
    with pytest.raises(CytoError, match="1 downstream runs of study s3 have no tag backbone"):
        representation_results("s3")


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
