"""The study: the grid, bad input, exclusive claims, resume/grow on a real store, and two workers on a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from analysis.query import downstream_results
from cyto_ssrl import tracking
from cyto_ssrl.downstream.budgets import budget_label
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study import claims, launch, runner
from cyto_ssrl.study.cells import STAGES
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import STUDY_PRESETS, StudyConfig
from cyto_ssrl.study.runner import Runner

ROOT = Path(__file__).resolve().parents[1]


def micro(manifest: Path, **changes) -> StudyConfig:
    """The smallest grid that still has every kind of cell: 2 ratios, MAE, an external baseline, 1 budget."""
    fields = dict(
        ratios=("1:1", "1:2"),
        methods=("mae",),
        modes=("linear",),
        budgets=(50,),
        resamples=2,
        manifest=str(manifest),
        pool_size=64,
        representation=False,
        external="random",
        pretrain_overrides={"epochs": 1, "batch_size": 16, "num_workers": 0},
    )
    return StudyConfig(**{**fields, **changes})


@pytest.fixture
def manifest(small_cohort) -> Path:
    return small_cohort


def finished_cells(study_id: str):
    runs = cell_runs(study_id)
    return runs[runs["status"] == "FINISHED"]


def new_cell_runs(run_again) -> pd.DataFrame:
    """The cell runs of study micro that `run_again()` made."""
    before = set(cell_runs("micro")["run_id"])
    run_again()
    runs = cell_runs("micro")
    return runs[~runs["run_id"].isin(before)]


# --- the grid ---


def test_demo_and_paper_grids_have_every_cell_once_after_what_it_needs():
    for name, expected in [
        ("demo", 1 + 3 + 6 + 2 + 8 * (2 * 3 * 2 + 1) + 1),
        ("paper", 1 + 9 + 18 + 18 * (2 * 5 * 5 + 1) + 1),
    ]:
        cells = plan(STUDY_PRESETS[name])
        keys = [c.key for c in cells]
        assert len(keys) == len(set(keys)) == expected, name
        seen = set()
        for cell in cells:
            assert set(cell.needs) <= seen, f"{cell.key} comes before what it needs"
            seen.add(cell.key)
    paper = [c.key for c in plan(STUDY_PRESETS["paper"])]
    assert "pretrain/simclr/1:10000/s0" in paper and "downstream/pretrain/mae/1:500/s0/finetune/b1/r4" in paper
    # The paper's nine pools (issue: 1:1, 1:5 ... 1:5,000, 1:10,000).
    assert [c.ratio for c in plan(STUDY_PRESETS["paper"]) if c.stage == "pools"] == [
        "1:1",
        "1:5",
        "1:10",
        "1:50",
        "1:100",
        "1:500",
        "1:1000",
        "1:5000",
        "1:10000",
    ]


def test_a_tuned_grid_searches_each_budgets_lr_before_its_downstream_cells():
    untuned = plan(STUDY_PRESETS["demo"])
    cells = plan(load_config("demo", tune_trials=3))
    tunes = [c for c in cells if c.stage == "tune"]
    assert not any(c.stage == "tune" for c in untuned)
    assert len(tunes) == 8 * 2 * 3 and len(cells) == len(untuned) + len(tunes)  # versions x modes x budgets
    for cell in cells:
        if cell.stage == "downstream":
            tune = f"tune/{cell.model}/{cell.mode}/b{budget_label(cell.budget)}"
            assert tune in cell.needs and tune in {c.key for c in tunes}, cell.key
    assert "tune/pretrain/mae/1:10/s0/finetune/b5" in {c.key for c in tunes}


def test_a_grown_study_keeps_every_cell_it_had():
    small = {c.key for c in plan(STUDY_PRESETS["demo"])}
    grown = {c.key for c in plan(load_config("demo", ratios=("1:1", "1:10", "1:100", "1:1000"), seeds=(0, 1)))}
    assert small <= grown
    assert {"pools/1:1000/s0", "pretrain/mae/1:1/s1", "pretrain/simclr/1:1000/s1"} <= grown - small


def test_preset_from_a_json_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"ratios": ["1:1", "1:5"], "budgets": [10], "pool_size": 100}))
    cfg = load_config(str(path), methods=("simclr",))
    assert (cfg.ratios, cfg.budgets, cfg.pool_size, cfg.methods) == (("1:1", "1:5"), (10,), 100, ("simclr",))


# --- bad input: one line, nothing written ---


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: load_config("nope"), "unknown study preset 'nope'"),
        (lambda: run_study(load_config("demo", methods=("byol",)), "x"), "unknown method 'byol'"),
        (lambda: run_study(load_config("demo", ratios=("1-10",)), "x"), "is not written 1:r"),
        (lambda: run_study(load_config("demo", budgets=(150,)), "x"), "not in (0, 100]"),
        (lambda: run_study(load_config("demo", modes=("linear", "knn")), "x"), "unknown downstream mode"),
        (lambda: run_study(StudyConfig(downstream_preset="huge"), "x"), "unknown preset 'huge'"),
        (lambda: run_study(StudyConfig(tune_trials=-1), "x"), "tune_trials must be 0 (no tuning) or more, got -1"),
        (lambda: run_study(StudyConfig(), "x", workers=2), "workers=2 share the grid through a tracking server"),
        (lambda: run_study(STUDY_PRESETS["paper"], "x"), "source 'slides' needs input"),
        (lambda: run_study(StudyConfig(), "it's"), 'study id "it\'s" may hold only'),
    ],
)
def test_bad_input_is_one_line_before_any_run(store, make, message):
    with pytest.raises(CytoError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make()
    assert mlflow.search_runs(search_all_experiments=True).empty
    assert not Path("outputs").exists()


def test_many_failed_cells_are_summed_up_in_one_short_line():
    failed = {
        f"downstream/pretrain/mae/1:1/s0/linear/b100/r{r}": "budget 100 % needs 31 positive tiles" for r in range(18)
    }
    line = launch._failures(failed)
    assert line.startswith("18 cell(s) failed here (first downstream/pretrain/mae/1:1/s0/linear/b100/r0: budget")
    assert "17 more" in line and len(line) < 200 and "\n" not in line


def test_an_unreachable_tracking_server_stops_the_study_before_any_work(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CytoError, match="is unreachable"):
        run_study(STUDY_PRESETS["demo"], "demo")
    assert not Path("outputs").exists()


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


# --- claims ---


def test_workers_in_parallel_take_every_cell_exactly_once(store, manifest, monkeypatch):
    """Three workers on one grid whose cells only log a run: the claims alone keep them from doubling work."""
    monkeypatch.setattr(runner, "POLL_S", 0.2)
    done: list[str] = []

    def fake_work(context, cell, run_id):
        with tracking.stage_run(cell.stage, {"cell": cell.key}, run_id=run_id):
            done.append(cell.key)
            if cell.stage in ("pretrain", "external"):
                tracking.set_tags({"model_uri": f"models:/fake/{cell.key}"})
            time.sleep(0.05)

    fakes = dict.fromkeys(STAGES, fake_work)
    cfg = micro(manifest, resamples=3)
    with tracking.stage_run("study", {}, {"study": "claims"}) as parent:
        workers = [Runner("claims", cfg, parent.info.run_id, parent.info.experiment_id, stages=fakes) for _ in range(3)]
        threads = [threading.Thread(target=worker.run) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    keys = [c.key for c in plan(cfg)][:-1]
    assert sorted(done[:-1]) == sorted(keys) and done[-1].startswith("analysis/")
    finished = finished_cells("claims")
    assert len(finished) == len(keys) + 1 and finished["key"].is_unique
    assert set(cell_runs("claims")["status"]) == {"FINISHED"}  # lost claims were deleted, not left behind


def test_a_dead_workers_claim_goes_stale_and_is_taken_over(store, manifest, monkeypatch):
    cfg = micro(manifest)
    with tracking.stage_run("study", {}, {"study": "stale"}) as parent:
        worker = Runner("stale", cfg, parent.info.run_id, parent.info.experiment_id)
        cell = worker.cells[0]  # pools/1:1/s0
        tags = {"stage": "pools", "study": "stale", "study_cell": cell.key}
        live = tracking.create_run(parent.info.experiment_id, cell.key, {**tags, "heartbeat": time.time()})
        worker.ledger.refresh()
        ids = (parent.info.experiment_id, parent.info.run_id)
        assert claims.claim(worker.ledger, cell, *ids) is None  # a live claim is respected
        tracking.end_run(live, "KILLED")
        dead = tracking.create_run(parent.info.experiment_id, cell.key, {**tags, "heartbeat": time.time() - 3600})
        worker.ledger.refresh()
        claimed = claims.claim(worker.ledger, cell, *ids)
    assert claimed is not None and MlflowClient().get_run(dead).info.status == "FAILED"


def test_a_killed_studys_own_run_is_marked_failed_and_a_live_one_is_left(store):
    experiment = mlflow.set_experiment("studies").experiment_id
    beats = {"killed": time.time() - 3600, "live": time.time(), "other study": time.time() - 3600}
    runs = {
        name: tracking.create_run(
            experiment, name, {"stage": "study", "heartbeat": beat, "study": "other" if name == "other study" else "s"}
        )
        for name, beat in beats.items()
    }
    claims.fail_dead_study_runs("s")
    status = {name: MlflowClient().get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"killed": "FAILED", "live": "RUNNING", "other study": "RUNNING"}


# --- a real study on a real store ---


@pytest.mark.slow
def test_study_runs_resumes_repairs_and_grows(store, manifest):
    cfg = micro(manifest, representation=True)
    folder = run_study(cfg, "micro", "micro")
    cells = [c.key for c in plan(cfg)][:-1]
    finished = finished_cells("micro")
    assert set(cells) < set(finished["key"]) and finished["key"].is_unique
    assert (folder / "figures" / "curves_acc.png").is_file() and (folder / "tables" / "table_acc.md").is_file()
    study_run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'").iloc[0]
    assert study_run["status"] == "FINISHED" and float(study_run["tags.heartbeat"]) > 0
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
    replaced = finished.loc[finished["key"].isin(users), "run_id"]
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


# --- two workers against a real tracking server ---


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` (SQLite store, served artifact root) on 127.0.0.1, started by the project's command."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(tmp_path / "server.log", "w") as log:  # the server keeps its own copy of the file
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "entrypoints.server",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{tmp_path / 'server.db'}",
                "--artifacts",
                str(tmp_path / "artifacts"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
    yield uri
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_workers_share_a_study_on_a_tracking_server(tmp_path, manifest, server, monkeypatch):
    preset = tmp_path / "micro.json"
    cfg = micro(manifest)
    preset.write_text(json.dumps({k: v for k, v in vars(cfg).items() if k != "output"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    env.update(MLFLOW_TRACKING_URI=server, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "entrypoints.study", "--preset", str(preset), "--study", "shared"]
    # One command with 2 workers (it starts the second itself) and one more started by hand at the same time.
    processes = [
        subprocess.Popen(
            command + ["--workers", str(n)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (2, 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    mlflow.set_tracking_uri(server)
    runs = cell_runs("shared")
    keys = [c.key for c in plan(cfg)][:-1]
    finished = runs[runs["status"] == "FINISHED"]
    assert set(keys) < set(finished["key"])
    assert runs["key"].is_unique, runs.groupby("key").size().loc[lambda n: n > 1]  # no cell ran twice
    assert set(runs["status"]) == {"FINISHED"}  # and no run was lost or left RUNNING
    study_runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'")
    assert len(study_runs) == 2 and set(study_runs["status"]) == {"FINISHED"}
    assert set(finished["tags.mlflow.parentRunId"]) <= set(study_runs["run_id"])
    print("cells per worker:", finished.groupby("tags.study_worker").size().to_dict())
    version = MlflowClient().get_model_version_by_alias("cyto-mae-vit_tiny", "r2")
    assert version.tags["ratio"] == "1:2"


@pytest.mark.slow
def test_mlflow_run_study_entry_point(tmp_path, manifest, store):
    """The real `mlflow run . -e study --env-manager local` on a small preset: it finishes, the values it used stand
    beside the parameters MLflow logged as given, and its closing lines give the address of the runs table."""
    preset = tmp_path / "micro.json"
    preset.write_text(
        json.dumps({k: v for k, v in vars(micro(manifest, representation=False, resamples=1)).items() if k != "output"})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` of this environment
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "study",
        "--env-manager",
        "local",
        "--experiment-name",
        "cli",
        "-P",
        f"preset={preset}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study_run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'").iloc[0]
    assert study_run["status"] == "FINISHED" and study_run["tags.study"] == "micro"
    # MLflow logs the parameters as given: an unset one reads as its MLproject default, the value used beside it.
    assert study_run["params.study"] == "preset" and study_run["params.used.study"] == "micro"
    assert study_run["params.ratios"] == "preset" and study_run["params.cfg.ratios"] == "('1:1', '1:2')"
    url = f"#/experiments/{study_run['experiment_id']}/runs?workflowType=machine_learning"
    assert url in done.stdout.strip().splitlines()[-1]
