"""The study's driver against an engine it cannot see into: cells go when their needs are done, each once, and a
driver started again after a kill waits for the jobs its predecessor left in flight instead of submitting them again.
The engine here is a fake one (jobs finish when the test says); the real engines have their own tests."""

from __future__ import annotations

import os
import socket

import pytest
from mlflow import MlflowClient

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study import runner
from cyto_ssrl.study.executors.base import OVER, QUEUED, CellJob
from cyto_ssrl.study.launch import DRIVER, take_over
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.runner import Runner

from ..helpers import micro


class DriverKilled(Exception):
    pass


class QueueEngine:
    """Jobs outlive the driver, as SLURM's do. A job stays queued for `polls` polls, then its cell's run finishes
    with the tags later cells read. `kill_at_poll` makes one poll raise, as if the driver were killed there."""

    name = "queue"
    jobs_outlive_driver = True

    def __init__(self, polls: int = 1):
        self.polls = polls
        self.jobs: dict[str, list] = {}  # job id -> [CellJob, polls left]
        self.submitted: list[list[str]] = []  # cell keys of each submit call
        self.kill_at_poll: int | None = None
        self.n_polls = 0

    def check(self, needs) -> None:
        pass

    def has_gpus(self) -> bool:
        return False

    def submit(self, jobs: list[CellJob]) -> list[str]:
        self.submitted.append([job.cell_key for job in jobs])
        ids = [str(len(self.jobs) + i) for i in range(len(jobs))]
        for job_id, job in zip(ids, jobs):
            self.jobs[job_id] = [job, self.polls]
        return ids

    def states(self, job_ids: list[str]) -> dict[str, str]:
        self.n_polls += 1
        if self.n_polls == self.kill_at_poll:
            raise DriverKilled
        states = {}
        for job_id in job_ids:
            entry = self.jobs[job_id]
            entry[1] -= 1
            if entry[1] == 0:
                finish(entry[0])
            states[job_id] = OVER if entry[1] <= 0 else QUEUED
        return states

    def slots(self, running: int) -> int:
        return 1000

    def reason(self, job_id: str) -> str:
        return ""


def finish(job: CellJob) -> None:
    """What a cell's job leaves in its run: the outputs later cells read, and FINISHED."""
    tracking.set_run_tag(job.run_id, "pool_path", "pool.parquet")
    tracking.set_run_tag(job.run_id, "model_uri", f"models:/fake/{job.cell_key}")
    tracking.end_run(job.run_id, "FINISHED")


def driver(study: str, cfg, engine) -> Runner:
    with tracking.stage_run("study", {}, {"study": study}) as parent:
        pass
    return Runner(study, cfg, "study.json", engine, (parent.info.run_id, parent.info.experiment_id))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(runner, "POLL_S", 0.01)


def test_each_cell_is_submitted_once_after_the_cells_it_needs(store, manifest):
    cfg = micro(manifest, resamples=3)
    engine = QueueEngine(polls=2)
    assert driver("order", cfg, engine).run() == {}
    order = [key for batch in engine.submitted for key in batch]
    cells = plan(cfg)
    assert sorted(order[:-1]) == sorted(c.key for c in cells[:-1]) and order[-1].startswith("analysis/")
    position = {key: i for i, key in enumerate(order)}
    batch_of = {key: i for i, batch in enumerate(engine.submitted) for key in batch}
    for cell in cells[:-1]:
        assert all(batch_of[need] < batch_of[cell.key] for need in cell.needs), cell.key  # after its needs
    # The resamplings of one model x mode x budget go in one submit call (one job array on SLURM).
    resamples = [k for k in order if k.startswith("downstream/pretrain/mae/1:1/s0/linear/b50/")]
    assert len(resamples) == 3 and len({batch_of[k] for k in resamples}) == 1
    runs = cell_runs("order")
    assert runs["key"].is_unique and set(runs["status"]) == {"FINISHED"} and len(position) == len(order)
    assert set(tracking.tag(runs, "study_job")) == {f"queue:{job_id}" for job_id in engine.jobs}


def test_a_driver_started_again_waits_for_the_jobs_in_flight_and_submits_none_twice(store, manifest):
    cfg = micro(manifest)
    engine = QueueEngine(polls=3)
    engine.kill_at_poll = 2  # the first driver dies while its first cells are queued
    with pytest.raises(DriverKilled):
        driver("killed", cfg, engine).run()
    in_flight = [key for batch in engine.submitted for key in batch]
    assert in_flight and set(cell_runs("killed")["status"]) == {"RUNNING"}
    assert driver("killed", cfg, engine).run() == {}
    submitted = [key for batch in engine.submitted for key in batch]
    assert len(submitted) == len(set(submitted)) == len(plan(cfg))  # every cell once, over both drivers
    runs = cell_runs("killed")
    assert runs["key"].is_unique and set(runs["status"]) == {"FINISHED"}


def test_a_local_cell_left_running_by_a_killed_driver_is_marked_failed_and_run_again(store, manifest):
    cfg = micro(manifest)
    first = driver("orphan", cfg, QueueEngine())
    orphan = tracking.create_run(first.experiment_id, "pools/1:1/s0", {"study": "orphan", "study_cell": "pools/1:1/s0"})
    assert driver("orphan", cfg, QueueEngine()).run() == {}
    assert MlflowClient().get_run(orphan).info.status == "FAILED"
    runs = cell_runs("orphan")
    assert (runs.loc[runs["key"] == "pools/1:1/s0", "status"].tolist()).count("FINISHED") == 1


def test_one_driver_per_study_and_a_dead_ones_run_is_marked_failed(store):
    refused = pytest.raises(CytoError, match=f"being run by process {os.getpid()}")
    with tracking.stage_run("study", {}, {"study": "s", "driver": DRIVER}) as live, refused:
        take_over("s")  # this process is alive: its study run is a driver at work
    experiment = live.info.experiment_id
    dead = [
        tracking.create_run(experiment, "study-s", {"stage": "study", "study": "s", "driver": driver})
        for driver in (f"{socket.gethostname()}:{2**22 + 1}", "otherhost:1")  # a pid no process has; another host
    ]
    take_over("s")
    assert [MlflowClient().get_run(run_id).info.status for run_id in dead] == ["FAILED", "FAILED"]
