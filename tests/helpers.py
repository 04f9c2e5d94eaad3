"""Plain helpers shared by several test packages: the checkout's root, a free port, a real tracking server, the
smallest study grid and the runs of a study or a downstream run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd

from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.presets import StudyConfig

ROOT = Path(__file__).resolve().parents[1]

EVAL_METRICS = [f"eval/{name}" for name in METRIC_NAMES]
MODEL = "cyto-mae-vit_tiny"


def mlflow_run(entry: str, *params: str, experiment: str | None = None) -> list[str]:
    """The command line of `mlflow run <checkout> -e <entry> --env-manager local -P <param> ...`."""
    command = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    command += ["--experiment-name", experiment] if experiment else []
    return command + [word for param in params for word in ("-P", param)]


def local_env_path() -> str:
    """PATH with this interpreter's folder first: `mlflow run --env-manager local` runs `python` from PATH."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, backend: str, folder: Path, *options: str, env: dict | None = None) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port`, started by the project's command in `folder` (its artifacts,
    its log server.log, appended to) with `options` and `env` added, once it answers; None if it did not answer
    within 3 minutes (on a new PostgreSQL database MLflow's migrations take about half a minute).

    It leads a process group of its own (MLflow's server runs its web workers as children): killing the group stops
    them all and frees the port."""
    command = [sys.executable, "-m", "entrypoints.server", "--port", str(port), "--backend-store-uri", backend]
    command += ["--artifacts", str(folder / "artifacts"), *options]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # this checkout's entry point
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": path, **(env or {})}
    with open(folder / "server.log", "a") as log:  # the server keeps its own copy of the file
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    return None


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


def finished_cells(study_id: str):
    runs = cell_runs(study_id)
    return runs[runs["status"] == "FINISHED"]


def children(parent_id: str, mode: str | None = None) -> pd.DataFrame:
    query = f"tags.mlflow.parentRunId = '{parent_id}'" + (f" and params.mode = '{mode}'" if mode else "")
    return mlflow.search_runs(search_all_experiments=True, filter_string=query, order_by=["attributes.run_name"])
