"""The executor interface: what the study's driver hands an engine (a CellJob with the Resources its stage needs),
and what it asks back (the engine's view of each job: queued, running, or over).

The driver holds the plan and submits each cell when the cells it needs have finished; the tracking store says
what finished, the engine whether a job is still queued or running. An engine never decides what runs next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cyto_ssrl.study.plan import Cell
from cyto_ssrl.study.presets import StudyConfig

QUEUED, RUNNING, OVER = "queued", "running", "over"  # the engine's view; the store says whether OVER is FINISHED


@dataclass(frozen=True)
class Resources:
    """What one cell's job asks its engine for."""

    cpus: int = 1
    gpus: int = 0  # per node
    nodes: int = 1


@dataclass(frozen=True)
class CellJob:
    """One cell to run in the MLflow run the driver created for it; `config` is the study's saved settings. A job reads
    only the runs it needs, never the whole study: its cost does not grow with the grid."""

    config: Path
    cell_key: str
    run_id: str
    resources: Resources
    needs: dict[str, str]  # the key of each cell it needs -> that cell's current run, whose outputs it reads


class Executor(Protocol):
    name: str
    jobs_outlive_driver: bool  # SLURM jobs run on when the driver dies; local cells and Ray tasks die with it

    def check(self, needs: list[Resources]) -> None:
        """A one-line CytoError, before anything is submitted, when the engine cannot be reached or can never
        satisfy one of `needs` (e.g. 8 GPUs per job on nodes with 4)."""

    def has_gpus(self) -> bool:
        """Whether the engine has GPUs to give (after `check`): where the study leaves `gpus` unset, cells that train
        ask for them only then."""

    def submit(self, jobs: list[CellJob]) -> list[str]:
        """Start the jobs (several of one kind may go as one job array); returns their engine ids, in order."""

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """QUEUED, RUNNING or OVER for each job id; an id the engine does not know (a dead driver's Ray task) is
        OVER."""

    def slots(self, running: int) -> int:
        """How many more cells may start now, with `running` in flight."""

    def reason(self, job_id: str) -> str:
        """Why a job that is over did not finish its run, in one line ('' when the engine does not say)."""


def resources(cell: Cell, cfg: StudyConfig) -> Resources:
    """What a cell's stage needs: pre-training a GPU and a CPU per process (optionally on several nodes), downstream
    and tuning one GPU, the rest one CPU. Data-loader workers share their job's CPUs."""
    nodes = int(cfg.slurm.get("nodes", 1))
    if cell.stage == "pretrain":
        per_node = max(1, cfg.num_processes // nodes)
        return Resources(cpus=per_node, gpus=per_node if cfg.gpus else 0, nodes=nodes)
    if cell.stage in ("downstream", "tune", "representation"):
        return Resources(gpus=1 if cfg.gpus else 0)
    return Resources()
