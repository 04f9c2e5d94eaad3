"""The study's driver: it holds the plan, submits each cell to its executor when the cells it needs have finished,
and watches the engine (is the job queued, running, over?) and the tracking store (did its run finish?) until every
cell is done or blocked by a failure.

Each cell is one MLflow run, created here before its job is submitted and tagged with the engine's job id. A driver
started again (the first one was killed) finds the runs still in flight and asks their engine about them: jobs still
queued or running are waited for, not submitted again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from cyto_ssrl import tracking
from cyto_ssrl.study.executors.base import OVER, CellJob, Executor, resources
from cyto_ssrl.study.ledger import JOB_TAG, Ledger
from cyto_ssrl.study.plan import Cell, plan
from cyto_ssrl.study.presets import StudyConfig

POLL_S = 2.0  # how often the driver asks an engine about cells in flight when nothing changed


class Runner:
    def __init__(
        self,
        study_id: str,
        cfg: StudyConfig,
        config_file: Path,
        executor: Executor,
        run_ids: tuple[str, str],
        progress: bool = False,
    ):
        self.study_id, self.cfg, self.config_file, self.executor = study_id, cfg, config_file, executor
        self.parent_run_id, self.experiment_id = run_ids
        self.cells = plan(cfg)
        self.ledger = Ledger(study_id, self.cells)
        self.bar = tqdm(total=len(self.cells), desc=f"study {study_id}", unit="cell") if progress else None
        self.in_flight: dict[str, tuple[str, str]] = {}  # cell key -> (run id, engine job id)
        self.ready: list[Cell] = []
        self.failed: dict[str, str] = {}
        self._logged_done = -1

    def run(self) -> dict[str, str]:
        """Work until every cell is done or blocked by a failure; returns {cell key: why it failed}."""
        done = self.ledger.refresh()
        self._reattach()
        self._count_needs(done)
        while self.ready or self.in_flight:
            self._show(done)
            if self.ready:
                slots = self.executor.slots(len(self.in_flight))
                batch, self.ready = self.ready[:slots], self.ready[slots:]
                self._submit([self.ledger.resolve(cell) for cell in batch])
            if self.in_flight and not self._poll(done) and not self.ready:
                time.sleep(POLL_S)
        self._show(done)
        if self.bar is not None:
            self.bar.close()
        return self.failed

    def unfinished(self) -> list[str]:
        done = set(self.ledger.current)
        return [key for key in (self.ledger.resolve(c).key for c in self.cells) if key not in done]

    def _count_needs(self, done: set[str]) -> None:
        """Which cells wait on which: a cell is ready when the last cell it needs is done (linear in the grid)."""
        self.ready, self.waiting, self.dependents = [], {}, {}
        for cell in self.cells:
            resolved = self.ledger.resolve(cell).key
            if resolved in done or resolved in self.in_flight:
                continue
            missing = [key for key in cell.needs if key not in done]
            for key in missing:
                self.dependents.setdefault(key, []).append(cell)
            self.waiting[cell.key] = len(missing)
            if not missing:
                self.ready.append(cell)

    def _done(self, key: str, run_id: str, done: set[str]) -> None:
        self.ledger.record(key, run_id)
        done.add(key)
        for cell in self.dependents.get(key, ()):
            self.waiting[cell.key] -= 1
            if self.waiting[cell.key] == 0:
                self.ready.append(cell)

    def _submit(self, cells: list[Cell]) -> None:
        """Create each cell's run, then hand the engine all of them at once (arrays where it makes them)."""
        jobs = [
            CellJob(
                self.config_file,
                cell.key,
                self._create_run(cell),
                resources(cell, self.cfg),
                {key: self.ledger.current[key] for key in cell.needs},
            )
            for cell in cells
        ]
        try:
            job_ids = self.executor.submit(jobs)
        except Exception:
            for job in jobs:  # no engine holds them: nothing would ever end these runs
                tracking.fail_if_running(job.run_id)
            raise
        for job, job_id in zip(jobs, job_ids):
            tracking.set_run_tag(job.run_id, JOB_TAG, f"{self.executor.name}:{job_id}")
            self.in_flight[job.cell_key] = (job.run_id, job_id)

    def _create_run(self, cell: Cell) -> str:
        for stale in self.ledger.stale(cell):
            tqdm.write(
                f"cell {cell.key}: run {stale} used runs that have been replaced; it is deleted and the cell "
                f"runs again (`mlflow runs restore --run-id {stale}` brings the old run back)"
            )
            tracking.delete_run(stale)
        tags = {
            "stage": cell.stage,
            "study": self.study_id,
            "study_cell": cell.key,
            "study_inputs": self.ledger.inputs(cell),
        }
        return tracking.create_run(self.experiment_id, cell.key, tags, self.parent_run_id)

    def _poll(self, done: set[str]) -> bool:
        """Settle the cells whose job is over: FINISHED runs are done, anything else failed. True if one settled."""
        states = self.executor.states([job_id for _, job_id in self.in_flight.values()])
        over = [(key, run_id, job_id) for key, (run_id, job_id) in self.in_flight.items() if states[job_id] == OVER]
        for key, run_id, job_id in over:
            del self.in_flight[key]
            status = tracking.run_status(run_id)
            if status == "FINISHED":
                self._done(key, run_id, done)
                continue
            tracking.fail_if_running(run_id)  # its job is over: it died without ending its run
            self.failed[key] = self.executor.reason(job_id) or f"its job ended with the run {status}"
            tqdm.write(f"cell {key} failed: {self.failed[key]}", file=sys.stderr)
        return bool(over)

    def _reattach(self) -> None:
        """Cells a killed driver left in flight: this engine's jobs are waited for; any other run still RUNNING has
        no job that could end it (a local cell of a killed driver, another engine's job) and is marked FAILED."""
        for key, (run_id, job) in self.ledger.in_flight().items():
            engine, _, job_id = job.partition(":")
            if engine == self.executor.name and self.executor.jobs_outlive_driver:
                self.in_flight[key] = (run_id, job_id)
            else:
                tracking.fail_if_running(run_id)
        for run_id in self.ledger.orphans():
            tracking.fail_if_running(run_id)

    def _show(self, done: set[str]) -> None:
        """The bar, and the study run's metrics when the count changed (a point per change, not per poll)."""
        n_done = len(done)  # the ledger's current runs: cells of this plan only
        if n_done != self._logged_done:
            tracking.log_metrics(
                {"study/cells_done": n_done, "study/cells_total": len(self.cells)},
                step=n_done,
                run_id=self.parent_run_id,
            )
            self._logged_done = n_done
        if self.bar is not None:
            self.bar.update(n_done - self.bar.n)
