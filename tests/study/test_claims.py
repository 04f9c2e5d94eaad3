"""Exclusive claims: parallel workers take every cell once, a dead worker's claim goes stale, a killed study's run is
marked failed."""

from __future__ import annotations

import threading
import time

import mlflow
from mlflow import MlflowClient

from cyto_ssrl import tracking
from cyto_ssrl.study import claims, runner
from cyto_ssrl.study.cells import STAGES
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.runner import Runner

from ..helpers import finished_cells, micro


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
