"""Stage 4's learning-rate search: the best lr recorded and used, and trials pruned behind the median."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from cyto_ssrl.downstream.tuning import shown_storage
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.downstream import run_downstream
from cyto_ssrl.stages.tune import run_tune

from ..helpers import MODEL, children


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


@pytest.mark.slow
def test_the_search_can_live_in_a_real_postgresql(model, store, postgres_database):
    """Optuna's storage on a PostgreSQL database, as a lab shares one between machines; a rerun adds to it."""
    import optuna

    for _ in range(2):
        parent, best = run_tune(model, "linear", budget=10, n_trials=2, storage=postgres_database)
    name = mlflow.get_run(parent).data.tags["study_name"]
    study = optuna.load_study(study_name=name, storage=postgres_database)
    assert len(study.trials) == 4 and study.best_params["blr"] == pytest.approx(best)
    assert mlflow.get_run(parent).data.tags["optuna_storage"] == shown_storage(postgres_database)
