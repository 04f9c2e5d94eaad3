"""What the tracking store says about a study's cells: which are done (a FINISHED run made from the current runs of
the cells it needs), what each finished cell produced, which are in flight on an engine, and which runs are stale.

The driver reads the study's runs once when it starts, then records each cell it sees finish, so its own work stays
linear in the number of cells. A finished run whose inputs were run again since (a deleted backbone trained anew, a
pool re-drawn) is stale: its cell is to do again on the new inputs, and the stale run is deleted so no analysis
reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pandas as pd

from cyto_ssrl import tracking
from cyto_ssrl.study.plan import Cell

JOB_TAG = "study_job"  # the engine and its id of the job running a cell, e.g. slurm:1234_5


def cell_runs(study_id: str, key: str | None = None) -> pd.DataFrame:
    """The cell runs of a study (every status but deleted), with a `key` column (their cell)."""
    runs = tracking.find_runs(study=study_id, **({"study_cell": key} if key else {}))
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "status", "start_time", "key"])
    keys = tracking.tag(runs, "study_cell")
    return runs[keys.notna()].assign(key=keys[keys.notna()])


def digest(run_ids) -> str:
    return hashlib.sha256(" ".join(sorted(run_ids)).encode()).hexdigest()[:12]


class Ledger:
    """The study's cell runs as the driver knows them, and the current run of every done cell."""

    def __init__(self, study_id: str, cells: list[Cell]):
        self.study_id = study_id
        self.cells = cells
        self.runs = pd.DataFrame(columns=["run_id", "status", "start_time", "key"])
        self.current: dict[str, str] = {}  # cell key -> its finished run made from the current runs of its needs
        self.tags: dict[str, dict] = {}  # run id -> its tags, for the runs the ledger has read

    def refresh(self) -> set[str]:
        """Read every run of the study again; returns the keys of the done cells."""
        self.runs = cell_runs(self.study_id)
        self.tags = dict(zip(self.runs["run_id"], tracking.tags_of(self.runs)))
        self.current = {}
        finished = self.runs[self.runs["status"] == "FINISHED"]
        for i, cell in enumerate(self.cells):  # each after the cells it needs
            if not set(cell.needs) <= self.current.keys():
                continue
            cell = self.cells[i] = self.resolve(cell)
            runs = finished[(finished["key"] == cell.key) & self.made_from_current(finished, cell)]
            if not runs.empty:
                self.current[cell.key] = runs["run_id"].iloc[0]
        return set(self.current)

    def resolve(self, cell: Cell) -> Cell:
        """The analysis cell is keyed by the runs it summarises (new or re-run cells, a new analysis): its digest is
        known once every cell it needs is done."""
        if cell.stage != "analysis" or not set(cell.needs) <= self.current.keys():
            return cell
        return dataclasses.replace(cell, digest=self.inputs(cell))

    def record(self, key: str, run_id: str) -> None:
        """A cell seen to finish (by the driver), or one a job needs: its run is current."""
        self.current[key] = run_id

    def inputs(self, cell: Cell) -> str:
        """The digest of the current runs of the cells `cell` needs (its run's `study_inputs` tag)."""
        return digest(self.current[key] for key in cell.needs)

    def made_from_current(self, runs: pd.DataFrame, cell: Cell) -> pd.Series:
        """Which of `runs` were made from the current runs of `cell`'s needs (a run of an older version of this
        project, without the tag, counts as current)."""
        inputs = tracking.tag(runs, "study_inputs")
        return inputs.isna() | (inputs == self.inputs(cell))

    def stale(self, cell: Cell) -> list[str]:
        """Finished runs of `cell` made from inputs that have been replaced since."""
        runs = self.runs[(self.runs["key"] == cell.key) & (self.runs["status"] == "FINISHED")]
        return list(runs.loc[~self.made_from_current(runs, cell), "run_id"])

    def in_flight(self) -> dict[str, tuple[str, str]]:
        """Cell key -> (run id, engine job) of the RUNNING runs an engine was given: a driver started again finds
        these and asks their engine whether they still run instead of submitting them again."""
        running = self.runs[(self.runs["status"] == "RUNNING")]
        jobs = tracking.tag(running, JOB_TAG)
        return {run.key: (run.run_id, job) for run, job in zip(running.itertuples(), jobs) if isinstance(job, str)}

    def orphans(self) -> list[str]:
        """RUNNING cell runs that no engine was given (a cell of a killed driver that ran them itself)."""
        running = self.runs[self.runs["status"] == "RUNNING"]
        return list(running.loc[tracking.tag(running, JOB_TAG).isna(), "run_id"])

    def output(self, key: str, tag: str) -> str:
        """A tag of the current run of cell `key`: what a later cell reads (manifest, pool path, model URI)."""
        run_id = self.current[key]
        if run_id not in self.tags:  # a run finished since the ledger read the study
            self.tags[run_id] = tracking.run_tags(run_id)
        return self.tags[run_id][tag]

    def checkpoint(self, cell: Cell) -> str | None:
        """The job folder of the cell's newest failed run that left a checkpoint: a killed training goes on from it."""
        runs = cell_runs(self.study_id, cell.key)
        job_dirs = tracking.tag(runs, "job_dir")
        failed = runs[(runs["status"] == "FAILED") & job_dirs.notna()]
        for _, run in failed.sort_values("start_time", ascending=False).iterrows():
            if (Path(tracking.tag(run, "job_dir")) / "epoch.json").exists():
                return tracking.tag(run, "job_dir")
        return None
