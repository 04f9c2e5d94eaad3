"""How parallel workers share a grid through the tracking store alone: a worker claims a cell by creating its run,
then looks again, and backs off (deleting its run) if another live run of the cell exists. A claim stays live while
its worker renews a `heartbeat` tag; the claims of a killed worker go stale, are marked FAILED and are taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pandas as pd
from tqdm import tqdm

from cyto_ssrl import tracking
from cyto_ssrl.study.ledger import Ledger, cell_runs
from cyto_ssrl.study.plan import Cell

HEARTBEAT_S = 10.0
STALE_S = 60.0  # a RUNNING claim whose heartbeat is older is a dead worker's
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which worker ran a cell, in its run's tags


def is_live(runs: pd.DataFrame) -> pd.Series:
    """RUNNING with a recent heartbeat: a worker holds the cell."""
    beats = pd.to_numeric(tracking.tag(runs, "heartbeat"), errors="coerce").fillna(0.0)
    return (runs["status"] == "RUNNING") & (beats > time.time() - STALE_S)


def claim(ledger: Ledger, cell: Cell, experiment_id: str, parent_run_id: str) -> str | None:
    """Create the cell's run (after failing dead claims and deleting stale runs), then back off (deleting it) if
    another live run of the cell exists; returns the run id, or None when another worker has the cell."""
    runs = cell_runs(ledger.study_id, cell.key)
    for dead in runs.loc[(runs["status"] == "RUNNING") & ~is_live(runs), "run_id"]:
        tracking.end_run(dead, "FAILED")  # its worker stopped beating: it was killed
    for stale in ledger.stale(cell):
        tqdm.write(
            f"cell {cell.key}: run {stale} used runs that have been replaced; it is deleted and the cell "
            f"runs again (`mlflow runs restore --run-id {stale}` brings the old run back)"
        )
        tracking.delete_run(stale)
    tags = {
        "stage": cell.stage,
        "study": ledger.study_id,
        "study_cell": cell.key,
        "heartbeat": time.time(),
        "study_worker": WORKER,
        "study_inputs": ledger.inputs(cell),
    }
    run_id = tracking.create_run(experiment_id, cell.key, tags, parent_run_id)
    others = cell_runs(ledger.study_id, cell.key)
    others = others[(others["run_id"] != run_id) & ((others["status"] == "FINISHED") | is_live(others))]
    if not others.empty:
        tracking.delete_run(run_id)
        return None
    return run_id


@contextlib.contextmanager
def heartbeat(run_id: str):
    """Renew the claim's `heartbeat` tag from a thread while the cell works (training holds no lock on it)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; STALE_S allows several
                tracking.set_run_tag(run_id, "heartbeat", time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_dead_study_runs(study_id: str) -> None:
    """A killed study's own run stops beating like a dead worker's cell; mark it FAILED so it is not RUNNING forever."""
    runs = tracking.find_runs("study", "RUNNING", study=study_id)
    if not runs.empty:
        for run_id in runs.loc[~is_live(runs), "run_id"]:
            tracking.end_run(run_id, "FAILED")
