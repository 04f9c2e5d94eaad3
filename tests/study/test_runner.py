"""Real studies on a real store: a tuned one, and one that runs, resumes, repairs and grows."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from analysis.query import downstream_results
from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.launch import DRIVER, run_study
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan

from ..helpers import finished_cells, micro


def new_cell_runs(run_again) -> pd.DataFrame:
    """The cell runs of study micro that `run_again()` made."""
    before = set(cell_runs("micro")["run_id"])
    run_again()
    runs = cell_runs("micro")
    return runs[~runs["run_id"].isin(before)]


def test_a_tuned_study_trains_each_budget_with_its_searched_lr(store, manifest, tmp_path):
    """Real cells: one backbone, its Optuna search of the linear probe's blr, and the two budget draws trained with
    the best blr found, the search kept in the study's own Optuna storage."""
    storage = f"sqlite:///{tmp_path / 'tuning.db'}"
    cfg = micro(manifest, ratios=("1:1",), external="", tune_trials=2, tune_storage=storage)
    run_study(cfg, "tuned", "micro")
    finished = finished_cells("tuned").set_index("key")
    tune = finished.loc["tune/pretrain/mae/1:1/s0/linear/b50"]
    best = float(tune["tags.best_blr"])
    assert tune["tags.optuna_storage"] == storage and tune["params.n_trials"] == "2"
    trials = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{tune.run_id}'")
    assert len(trials) == 2 and best in set(trials["params.blr"].astype(float))
    for resample in (0, 1):
        downstream = finished.loc[f"downstream/pretrain/mae/1:1/s0/linear/b50/r{resample}"]
        assert float(downstream["params.blr"]) == pytest.approx(best)
    assert not (tmp_path / "optuna.db").exists()  # nothing went to the default storage
    assert downstream_results("tuned")["blr"].tolist() == pytest.approx([best, best])  # the analysis shows it


@pytest.mark.slow
def test_study_runs_resumes_repairs_and_grows(store, manifest):
    cfg = micro(manifest, representation=True)
    folder = run_study(cfg, "micro", "micro")
    cells = [c.key for c in plan(cfg)][:-1]
    finished = finished_cells("micro")
    assert set(cells) < set(finished["key"]) and finished["key"].is_unique
    assert (folder / "figures" / "curves_acc.png").is_file() and (folder / "tables" / "table_acc.md").is_file()
    study_run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'").iloc[0]
    assert study_run["status"] == "FINISHED" and study_run["tags.driver"] == DRIVER
    assert study_run["metrics.study/cells_done"] == study_run["metrics.study/cells_total"] == len(cells) + 1
    done = MlflowClient().get_metric_history(study_run["run_id"], "study/cells_done")
    assert [m.value for m in done] == sorted({m.value for m in done})  # a point when it changed, not per poll
    # Names that say what each run holds: one per cell, the model's label first.
    assert finished["tags.mlflow.runName"].is_unique
    assert "mae-vit_tiny@1:2/linear-b50-r1" in set(finished["tags.mlflow.runName"])
    assert "representation/external-vit_tiny-random-init-64px" in set(finished["tags.mlflow.runName"])
    # The study run and the experiment say where the analysis is.
    analysis_run = study_run["tags.analysis_run_id"]
    assert f"#/experiments/{study_run['experiment_id']}/runs/{analysis_run}" in study_run["tags.mlflow.note.content"]
    experiment = MlflowClient().get_experiment(study_run["experiment_id"])
    assert analysis_run in experiment.tags["mlflow.note.content"]
    assert MlflowClient().get_run(analysis_run).data.tags["study"] == "micro"
    assert set(finished["tags.mlflow.parentRunId"]) == {study_run["run_id"]}
    versions = MlflowClient().search_model_versions("name = 'cyto-mae-vit_tiny'")
    assert sorted(v.tags["ratio"] for v in versions) == ["1:1", "1:2"]
    assert MlflowClient().get_model_version_by_alias("cyto-mae-vit_tiny", "r2").tags["ratio"] == "1:2"
    downstream = finished[(finished["tags.stage"] == "downstream") & (finished["params.mode"] == "linear")]
    assert len(downstream) == 3 * 2 and set(downstream["tags.ratio"]) == {"1:1", "1:2", "external"}
    representation = (folder / "tables" / "representation.csv").read_text().splitlines()
    assert len(representation) == 1 + 3 and "svm_acc" in representation[0]

    # Same study again: nothing to do, no new cell run.
    n_runs = len(mlflow.search_runs(search_all_experiments=True))
    run_study(cfg, "micro", "micro")
    assert len(mlflow.search_runs(search_all_experiments=True)) == n_runs + 1  # only the new study run

    # A failed cell (and only it) runs again, then the analysis of the repaired grid.
    broken = downstream.iloc[0]
    tracking.end_run(broken["run_id"], "FAILED")
    new = new_cell_runs(lambda: run_study(cfg, "micro", "micro"))
    assert sorted(new["key"].str.split("/").str[0]) == ["analysis", "downstream"]
    assert new[new["tags.stage"] == "downstream"]["key"].iloc[0] == broken["key"]

    # A pre-training cell whose run died goes on from that run's last checkpoint, in a new run. The cells that used
    # its old registered version run again on the new one, and their old runs are deleted; no other cell runs.
    died = finished[finished["key"] == "pretrain/mae/1:2/s0"].iloc[0]
    tracking.end_run(died["run_id"], "FAILED")
    new = new_cell_runs(lambda: run_study(cfg, "micro", "micro"))
    users = [c.key for c in plan(cfg) if c.model == died["key"]]
    assert len(users) == 3 and set(new["status"]) == {"FINISHED"}
    assert sorted(new["key"]) == sorted([died["key"], *users, *new["key"][new["key"].str.startswith("analysis/")]])
    continued = new[new["key"] == died["key"]].iloc[0]
    assert set(new.loc[new["key"].isin(users), "tags.model_uri"]) == {continued["tags.model_uri"]}
    replaced = finished.loc[finished["key"].isin(users) & (finished["run_id"] != broken["run_id"]), "run_id"]
    assert len(replaced) >= 2  # (the run failed on purpose above stays, FAILED, as the record of that attempt)
    assert {MlflowClient().get_run(r).info.lifecycle_stage for r in replaced} == {"deleted"}
    assert finished_cells("micro")["key"].is_unique
    assert continued["tags.continued_from"] == died["run_id"] and continued["status"] == "FINISHED"
    # The checkpoint was of the last epoch: no epoch is trained again and the new version holds the same weights.
    assert pd.isna(continued.get("metrics.train/loss"))
    old, new_weights = (
        mlflow.pytorch.load_model(uri).state_dict() for uri in (died["tags.model_uri"], continued["tags.model_uri"])
    )
    assert continued["tags.model_uri"] != died["tags.model_uri"] and all(
        torch.equal(old[name], new_weights[name]) for name in old
    )

    # Other settings under the same id are refused, naming what differs.
    with pytest.raises(CytoError, match="pool_size was '64', now '32'"):
        run_study(micro(manifest, representation=True, pool_size=32), "micro")

    # A grown study (a new ratio) runs only the new cells.
    new = new_cell_runs(
        lambda: run_study(micro(manifest, representation=True, ratios=("1:1", "1:2", "1:3")), "micro", "micro")
    )
    assert sorted(new["key"]) == sorted(
        [
            "pools/1:3/s0",
            "pretrain/mae/1:3/s0",
            "downstream/pretrain/mae/1:3/s0/linear/b50/r0",
            "downstream/pretrain/mae/1:3/s0/linear/b50/r1",
            "representation/pretrain/mae/1:3/s0",
            *new["key"][new["key"].str.startswith("analysis/")],
        ]
    )
