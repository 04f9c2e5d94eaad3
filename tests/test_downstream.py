"""Stage 4 on a backbone pre-trained by the real stages: budgets, feature cache, lineage tags, tuning, fine-tuning."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from cyto_ssrl.cli import main
from cyto_ssrl.downstream import setup as downstream_setup
from cyto_ssrl.downstream.budgets import draw_budget, parse_budgets
from cyto_ssrl.downstream.config import PAPER_BUDGETS
from cyto_ssrl.downstream.features import cache_path
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.downstream.setup import prepare
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.downstream import run_downstream
from cyto_ssrl.stages.pretrain import run_pretrain
from cyto_ssrl.stages.tune import run_tune
from tests.conftest import private_store

EVAL_METRICS = [f"eval/{name}" for name in METRIC_NAMES]
MODEL = "cyto-mae-vit_tiny"


def tiles_table(n_pos: int, n_neg: int) -> pd.DataFrame:
    ids = [f"t{i:06d}" for i in range(n_pos + n_neg)]
    return pd.DataFrame({"tile_id": ids, "y": [1] * n_pos + [0] * n_neg})


@pytest.mark.parametrize(
    "budget, n_train, n_val",
    [(100, 32_000, 8_000), (50, 16_000, 4_000), (10, 3_200, 800), (5, 1_600, 400), (1, 320, 80), (0.5, 160, 40)],
)
def test_budgets_have_exact_counts_balanced_in_train_and_val(budget, n_train, n_val):
    tiles = tiles_table(20_000, 20_000)  # the paper's downstream partition: 40,000 tiles
    train, val = draw_budget(tiles, budget, resample=0, seed=0)
    assert (len(train), len(val)) == (n_train, n_val)
    assert train["y"].sum() == n_train // 2 and val["y"].sum() == n_val // 2
    assert not set(train["tile_id"]) & set(val["tile_id"])
    again, _ = draw_budget(tiles, budget, resample=0, seed=0)
    other, _ = draw_budget(tiles, budget, resample=1, seed=0)
    assert again.equals(train) and (budget == 100 or not other.equals(train))


def test_infeasible_and_out_of_range_budgets():
    with pytest.raises(CytoError, match="needs 51 positive and 51 negative downstream tiles; the partition has 30 and"):
        draw_budget(tiles_table(30, 1_000), 10, resample=0, seed=0)
    for budget in (0, -1, 150):
        with pytest.raises(CytoError, match=r"not in \(0, 100\]"):
            draw_budget(tiles_table(500, 500), budget, resample=0, seed=0)
    with pytest.raises(CytoError, match="needs at least 4"):
        draw_budget(tiles_table(50, 50), 1, resample=0, seed=0)
    assert parse_budgets("100,50,10,5,1") == PAPER_BUDGETS
    with pytest.raises(CytoError, match="comma-separated"):
        parse_budgets("100;50")


@pytest.fixture(scope="module")
def registered(tmp_path_factory, small_cohort):
    """One tiny MAE backbone pre-trained by the real stages on a synthetic cohort, in a store every test copies."""
    folder = tmp_path_factory.mktemp("backbone")
    with private_store(folder):
        _, uri = run_pretrain(
            "mae", "1:1", manifest=str(small_cohort), pool_size=64, epochs=1, batch_size=16, num_workers=0
        )
    return folder / "mlruns.db", uri, small_cohort


@pytest.fixture
def model(store, registered) -> str:
    """The test's private store, holding a copy of the registered backbone (artifacts stay in the module's folder)."""
    db, uri, _ = registered
    shutil.copy(db, store.removeprefix("sqlite:///"))
    return uri


def children(parent_id: str, mode: str | None = None) -> pd.DataFrame:
    query = f"tags.mlflow.parentRunId = '{parent_id}'" + (f" and params.mode = '{mode}'" if mode else "")
    return mlflow.search_runs(search_all_experiments=True, filter_string=query, order_by=["attributes.run_name"])


def eval_metrics(parent_id: str) -> list[dict]:
    runs = children(parent_id, "linear")
    return runs[["params.budget", "params.resample"] + [f"metrics.{m}" for m in EVAL_METRICS]].to_dict("records")


def test_linear_probe_from_cache_equals_reencoding(model, monkeypatch):
    first = run_downstream(model, "linear", budgets=(10,), resamples=2)
    assert len(list(Path("outputs/features").glob("*.pt"))) == 2  # downstream and evaluation partitions

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache was not used")

    with monkeypatch.context() as patch:
        patch.setattr(downstream_setup, "encode", no_encoding)
        cached = run_downstream(model, "linear", budgets=(10,), resamples=2)
    shutil.rmtree("outputs/features")
    uncached = run_downstream(model, "linear", budgets=(10,), resamples=2, cache_features=False)
    assert not Path("outputs/features").exists()
    assert eval_metrics(first) == eval_metrics(cached) == eval_metrics(uncached)
    assert len(eval_metrics(first)) == 2


def test_a_stale_cache_is_recomputed(model):
    fresh = prepare(model).features("evaluation")
    path = cache_path("outputs/features", torch.load(next(Path("outputs/features").glob("*evaluation*")))["key"])
    stored = torch.load(path)
    # As if another registration had reused this name and version number for other weights.
    stale_key = {**stored["key"], "model_source": "models:/m-someothermodel"}
    torch.save({"key": stale_key, "features": torch.zeros_like(fresh)}, path)
    assert torch.equal(prepare(model).features("evaluation"), fresh)
    assert torch.load(path)["key"] == stored["key"]


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


def test_tune_records_the_best_lr_and_tuned_uses_it(model, store):
    parent, best = run_tune(model, "linear", budget=10, n_trials=3)
    run = mlflow.get_run(parent)
    assert run.data.metrics["tune/best_blr"] == pytest.approx(best) and float(run.data.tags["best_blr"]) == best
    assert run.data.tags["mlflow.runName"] == "mae-vit_tiny@1:1/tune-linear-b10"
    assert len(children(parent)) == 3
    assert {m.model_id for m in run.inputs.model_inputs} == {MlflowClient().get_model_version(MODEL, "1").source[8:]}
    assert sorted(d.dataset.name for d in run.inputs.dataset_inputs) == ["train-b10-r0", "val-b10-r0"]
    assert {"trials.csv", "history.png", "importance.png"} <= {a.path for a in MlflowClient().list_artifacts(parent)}
    assert Path(store.removeprefix("sqlite:///")).with_name("optuna.db").exists()  # its own file, not MLflow's
    tuned = run_downstream(model, "linear", budgets=(10,), resamples=1, lr="tuned")
    assert float(children(tuned, "linear")["params.blr"].iloc[0]) == best
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=("tags.method = 'mae' and params.budget = '10' and params.mode = 'linear'"),
    )
    assert list(found["tags.mlflow.parentRunId"]) == [tuned]  # tuning runs are not downstream results
    with pytest.raises(CytoError, match=r"no tuning study .*\|linear\|budget=5"):
        run_downstream(model, "linear", budgets=(5,), resamples=1, lr="tuned")
    single, _ = run_tune(model, "linear", budget=5, n_trials=1)  # too few trials for parameter importances
    assert "importance.png" not in {a.path for a in MlflowClient().list_artifacts(single)}


def test_finetune_logs_the_six_evaluation_metrics(model):
    parent = run_downstream(model, "finetune", budgets=(10,), resamples=1)
    runs = children(parent)
    assert list(runs["params.mode"]) == ["finetune"]  # no representation run: it scores frozen features
    run_id = runs["run_id"].iloc[0]
    metrics = mlflow.get_run(run_id).data.metrics
    assert all(0 <= metrics[name] <= 1 for name in EVAL_METRICS)
    history = MlflowClient().get_metric_history(run_id, "train/val_acc")
    assert [m.step for m in history] == list(range(int(runs["params.epochs"].iloc[0])))
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"images", "budget_split.csv"} <= artifacts


def test_tune_prunes_trials_that_fall_behind_the_median(model, store):
    """Optuna's median pruner on per-epoch validation accuracy: after 5 finished trials, poor lrs stop early."""
    import optuna

    parent, _ = run_tune(model, "linear", budget=10, n_trials=14)
    trials = children(parent)
    pruned = trials[trials["tags.pruned"] == "true"] if "tags.pruned" in trials else trials.iloc[:0]
    assert len(pruned) >= 1 and set(trials["status"]) == {"FINISHED"}  # a pruned trial stopped; it did not fail
    epochs = int(trials["params.epochs"].iloc[0])
    for run_id in pruned["run_id"]:
        assert len(MlflowClient().get_metric_history(run_id, "train/val_acc")) < epochs
    storage = f"sqlite:///{Path(store.removeprefix('sqlite:///')).with_name('optuna.db')}"
    study = optuna.load_study(study_name=mlflow.get_run(parent).data.tags["study_name"], storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(pruned)
