"""Many study workers logging to one tracking server at once: throughput, and whether any run is lost or doubled.

    python benchmarks/tracking_load.py [--backends sqlite,postgres] [--processes 2,4,8] [--runs 5] [--epochs 30]

For each backend a real `python -m entrypoints.server` (SQLite: a new file; PostgreSQL: a new database of the server
.ci/postgres-up starts, dropped afterwards); then for each N, N processes at once each log `--runs` downstream-sized
runs through the project's tracking functions, as a budget x resampling cell does: its params and tags, three
datasets, the budget's split table, train/loss and train/val_acc per epoch, the six eval/ metrics, two images.
Each intended run carries a unique token; afterwards the store is asked for them. Prints per backend and N: runs/s,
metric points/s, lost runs (a token with no FINISHED run) and duplicated runs (a token with more than one run).
Goal: none lost and none duplicated at every N. The clock starts when every process has imported MLflow.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EVAL = ("acc", "sp", "se", "pr", "f1", "auc")


def start_server(folder: Path, backend: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "entrypoints.server", "--backend-store-uri", backend, "--port", str(port)]
    command += ["--artifacts", str(folder / "artifacts")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(folder / "server.log", "w")  # noqa: SIM115 (the server writes it for as long as it runs)
    server = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300  # a new PostgreSQL database: MLflow's migrations first
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    sys.exit(f"the tracking server did not start: {(folder / 'server.log').read_text()[-2000:]}")


def log_runs(uri: str, experiment: str, tokens: list[str], epochs: int, folder: str, barrier) -> tuple[int, str]:
    """One worker: its runs, each as a downstream budget run logs it. Returns (metric points logged, error or '')."""
    os.environ.update(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=experiment)
    from PIL import Image

    from cyto_ssrl import tracking

    tracking.configure()
    tiles = pd.DataFrame({"tile_id": [f"t{i}" for i in range(60)], "label": [i % 2 for i in range(60)]})
    image = Image.new("RGB", (200, 200), "white")
    rng = np.random.default_rng(0)
    points, errors = 0, []
    barrier.wait()
    for token in tokens:
        try:
            log_run(token, epochs, folder, tiles, image, rng)
            points += 2 * epochs + len(EVAL) + 2
        except Exception as exc:  # the run is then counted as lost; the error says why
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    return points, "; ".join(errors)


def log_run(token: str, epochs: int, folder: str, tiles: pd.DataFrame, image, rng) -> None:
    import mlflow

    from cyto_ssrl import tracking

    params = {f"p{i}": rng.random() for i in range(20)}
    tags = {"load_token": token, "study": "load", "ratio": "1:10", "method": "mae", "backbone": "vit_tiny"}
    with tracking.stage_run("downstream", params, tags, run_name=token):
        for name, context in (("train", "train"), ("val", "validation"), ("evaluation", "evaluation")):
            tracking.log_dataset(tiles, folder, name=name, context=context)
        tracking.log_table(tiles, Path(folder) / f"{token}.csv")
        for epoch in range(epochs):
            tracking.log_metrics({"train/loss": 1 / (epoch + 1), "train/val_acc": rng.random()}, step=epoch)
        tracking.log_metrics({f"eval/{name}": rng.random() for name in EVAL})
        tracking.log_metrics({"train/best_epoch": epochs - 1, "train/best_val_acc": 0.9})
        for key in ("confusion_matrix", "roc"):
            mlflow.log_image(image, key=key, step=0, synchronous=True)


def count(uri: str, experiment: str) -> Counter:
    """FINISHED runs per token in the store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    return Counter(run.data.tags.get("load_token") for run in runs)


def load(uri: str, backend: str, n: int, runs: int, epochs: int, folder: Path) -> dict:
    experiment = f"load-{backend}-{n}"
    from mlflow import MlflowClient

    MlflowClient(uri).create_experiment(experiment)  # as a study's driver does before its workers start
    tokens = [[f"{backend}-{n}-{worker}-{k}-{uuid.uuid4().hex[:8]}" for k in range(runs)] for worker in range(n)]
    spawn = multiprocessing.get_context("spawn")  # each worker a fresh Python process, as on a cluster
    barrier = spawn.Manager().Barrier(n + 1)
    with spawn.Pool(n) as pool:
        jobs = [pool.apply_async(log_runs, (uri, experiment, t, epochs, str(folder), barrier)) for t in tokens]
        barrier.wait()
        start = time.perf_counter()
        results = [job.get() for job in jobs]
        seconds = time.perf_counter() - start
    found = count(uri, experiment)
    intended = [token for worker in tokens for token in worker]
    errors = [error for _, error in results if error]
    return {
        "backend": backend,
        "processes": n,
        "runs": len(intended),
        "seconds": round(seconds, 1),
        "runs/s": round(sum(found[t] > 0 for t in intended) / seconds, 2),
        "metric points/s": round(sum(points for points, _ in results) / seconds),
        "lost": sum(found[t] == 0 for t in intended),
        "duplicated": sum(found[t] - 1 for t in intended if found[t] > 1),
        "errors": "; ".join(errors)[:300],
    }


def database(backend: str, folder: Path) -> tuple[str, callable]:
    """The backend's store URI and what removes it afterwards."""
    if backend == "sqlite":
        return f"sqlite:///{folder / 'load.db'}", lambda: None
    import psycopg

    server = subprocess.run(["bash", str(ROOT / ".ci" / "postgres-up")], capture_output=True, text=True, check=True)
    base = server.stdout.split()[-1].rpartition("/")[0]
    name = f"load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE {name} WITH (FORCE)")

    return f"{base}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--processes", default="2,4,8", help="concurrent logging processes, one load per value")
    parser.add_argument("--runs", type=int, default=5, help="runs per process")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of train/ metrics per run")
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true")
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="tracking-load-") as tmp:
            folder = Path(tmp)
            store, remove = database(backend, folder)
            server = start_server(folder, store, args.port)
            try:
                uri = f"http://127.0.0.1:{args.port}"
                for n in (int(value) for value in args.processes.split(",")):
                    rows.append(load(uri, backend, n, args.runs, args.epochs, folder))
                    print(rows[-1], flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)
                remove()
    print(pd.DataFrame(rows).drop(columns="errors").to_markdown(index=False))
    if any(row["errors"] for row in rows):
        print("errors:", *(f"{r['backend']} N={r['processes']}: {r['errors']}" for r in rows if r["errors"]), sep="\n")


if __name__ == "__main__":
    main()
