"""Stage 4 on a backbone pre-trained by the real stages: lineage tags, bad model references and inputs, the CLI, and
fine-tuning."""

from __future__ import annotations

import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from cyto_ssrl.cli import main
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.downstream import run_downstream

from ..helpers import EVAL_METRICS, MODEL, children


def test_every_downstream_run_carries_the_model_lineage(model):
    parent = run_downstream(f"models:/{MODEL}@r1", "linear", budgets=(10, 5), resamples=2)
    version = MlflowClient().get_model_version(MODEL, "1")
    runs = children(parent)
    assert sorted(runs["params.mode"]) == ["linear"] * 4 + ["representation"]
    for key in ("ratio", "ratio_r", "method", "backbone", "pool_digest", "pretrain_run_id"):
        assert (runs[f"tags.{key}"] == version.tags[key]).all(), key
    assert (runs["params.model_uri"] == f"models:/{MODEL}@r1").all() and (runs["tags.model_version"] == "1").all()
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=("tags.method = 'mae' and tags.ratio = '1:1' and params.budget = '5' and params.mode = 'linear'"),
    )
    assert sorted(found["params.resample"]) == ["0", "1"]
    # A budget of a dozen tiles is one batch an epoch: min_steps gives it the steps to learn both classes.
    trained = runs[runs["params.mode"] == "linear"]
    assert (trained["metrics.eval/se"] > 0).all() and (trained["metrics.eval/sp"] > 0).all()
    analyses = runs[runs["params.mode"] == "representation"].iloc[0]
    for metric in ("knn_best_weighted_f1", "kmeans_ami", "kmeans_ari", "kmeans_purity", "svm_acc", "svm_auc"):
        assert np.isfinite(analyses[f"metrics.representation/{metric}"]), metric
    artifacts = {a.path for a in MlflowClient().list_artifacts(analyses["run_id"])}
    assert {"knn.csv", "knn.json", "knn.png", "svm_folds.csv", "svm_folds.json", "tsne.csv", "tsne.png"} <= artifacts

    # What the MLflow UI shows: names that say what was evaluated, the ratio as numbers the chart view can plot
    # against, and the model and data lineage as the run's inputs.
    names = sorted(runs["tags.mlflow.runName"])
    assert names == [
        *[f"mae-vit_tiny@1:1/linear-b{b}-r{r}" for b in (10, 5) for r in (0, 1)],
        "representation/mae-vit_tiny@1:1",
    ]
    assert mlflow.get_run(parent).data.tags["mlflow.runName"] == "mae-vit_tiny@1:1/linear"
    assert set(runs["params.ratio_r"]) == {"1"} and set(runs["params.log10_ratio"]) == {"0.0"}
    model_id = version.source.removeprefix("models:/")
    assert mlflow.get_logged_model(model_id).name == "mae-vit_tiny-r1"
    budget = mlflow.get_run(runs.loc[runs["tags.mlflow.runName"].str.endswith("b5-r1"), "run_id"].item())
    assert [m.model_id for m in budget.inputs.model_inputs] == [model_id]
    assert sorted((d.dataset.name, d.tags[0].value) for d in budget.inputs.dataset_inputs) == [
        ("evaluation", "evaluation"),
        ("train-b5-r1", "train"),
        ("val-b5-r1", "validation"),
    ]
    scored = [m for m in mlflow.get_logged_model(model_id).metrics if m.key == "eval/acc"]
    assert len(scored) == 4 and {m.dataset_name for m in scored} == {"evaluation"}  # filed under the model too
    images = {a.path.split("/")[-1].split("+")[0] for a in MlflowClient().list_artifacts(budget.info.run_id, "images")}
    assert images == {"confusion_matrix", "roc"}  # MLflow images: the chart view compares them across runs
    # The registry says what a version is and how to find the runs that evaluated it.
    described = MlflowClient().get_model_version(MODEL, "1").description
    assert "1:1" in described and f"tags.model_name = '{MODEL}' and tags.model_version = '1'" in described
    assert "r<r>" in MlflowClient().get_registered_model(MODEL).description


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/nope/1", "no registered model named 'nope'"),
        (f"models:/{MODEL}/99", f"'{MODEL}' has no version 99"),
        (f"models:/{MODEL}@r999", f"'{MODEL}' has no alias 'r999'"),
        ("outputs/pretrain/backbone.pt", "is not a registered model"),
    ],
)
def test_bad_model_references_are_one_line_errors(model, uri, message):
    with pytest.raises(CytoError, match=message) as error:
        run_downstream(uri, "linear", budgets=(10,), resamples=1)
    assert "\n" not in str(error.value)
    assert mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'downstream'").empty


def test_unusable_inputs_fail_before_any_run(model, registered, tmp_path):
    with pytest.raises(CytoError, match="needs .* positive and .* negative downstream tiles"):
        run_downstream(model, "linear", budgets=(10, 100), resamples=1)
    manifest = pd.read_parquet(registered[2])
    one_class = manifest[(manifest["partition"] != "evaluation") | (manifest["label"] == "negative")]
    one_class.to_parquet(tmp_path / "one_class.parquet")
    with pytest.raises(CytoError, match="evaluation partition .* holds negative tiles only"):
        run_downstream(model, "linear", budgets=(10,), resamples=1, manifest=str(tmp_path / "one_class.parquet"))
    MlflowClient().delete_model_version_tag(MODEL, "1", "ratio")
    with pytest.raises(CytoError, match="has no ratio tag"):
        run_downstream(model, "linear", budgets=(10,), resamples=1)
    assert mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'downstream'").empty


def test_cli_prints_one_line_and_exits_2(model, monkeypatch, capsys):
    from entrypoints.downstream import run

    monkeypatch.setattr(sys, "argv", ["downstream", "--model-uri", f"models:/{MODEL}/7", "--budgets", "10"])
    with pytest.raises(SystemExit) as exit_info:
        main(run)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: registered model '{MODEL}' has no version 7"]


def test_finetune_logs_the_six_evaluation_metrics(model):
    parent = run_downstream(model, "finetune", budgets=(10,), resamples=1)
    runs = children(parent)
    assert list(runs["params.mode"]) == ["finetune"]  # no representation run: it scores frozen features
    run_id = runs["run_id"].iloc[0]
    metrics = mlflow.get_run(run_id).data.metrics
    assert all(0 <= metrics[name] <= 1 for name in EVAL_METRICS)
    assert metrics["eval/se"] > 0 and metrics["eval/sp"] > 0  # it does not predict one class
    history = MlflowClient().get_metric_history(run_id, "train/val_acc")
    assert [m.step for m in history] == list(range(int(runs["params.epochs"].iloc[0])))
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"images", "budget_split.csv"} <= artifacts
