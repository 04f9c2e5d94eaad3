"""Two study commands, three workers, sharing one grid through a real tracking server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from mlflow import MlflowClient

from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan

from ..helpers import ROOT, free_port, micro


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
