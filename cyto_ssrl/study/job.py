"""What runs on an engine's worker for one cell: read the study's settings, see in the tracking store what the cells
it needs produced, and run the cell's stage function inside the run the driver created for it.

A job the engine starts again (SLURM requeued it after a preemption, Ray retried it after a lost node) finds its
run as the killed attempt left it: a pre-training goes on from its last epoch checkpoint in that same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cyto_ssrl import machines, tracking
from cyto_ssrl.files import write_atomic
from cyto_ssrl.stages.pretrain import follow_pretrain
from cyto_ssrl.study.cells import STAGES, Context
from cyto_ssrl.study.config import study_dir
from cyto_ssrl.study.executors.base import CellJob
from cyto_ssrl.study.ledger import Ledger
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import StudyConfig


def load_study(config: Path) -> tuple[str, StudyConfig]:
    """The study's id and settings as its driver saved them, with the driver's tracking store made this process's."""
    saved = json.loads(Path(config).read_text())
    os.environ["MLFLOW_TRACKING_URI"] = saved["tracking_uri"]
    cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
    return saved["study"], cfg


def save_study(path: Path, study_id: str, cfg: StudyConfig) -> Path:
    """What every job of the study reads first: its id, settings and tracking store (written once, atomically)."""
    # Paths made absolute: a job starts in whatever folder its engine gives it (a Ray worker's is Ray's own). Links
    # are kept: a manifest links to its tiling's version folder, which a re-tiling replaces.
    absolute = {
        name: os.path.abspath(getattr(cfg, name)) for name in ("output", "manifest", "input") if getattr(cfg, name)
    }
    cfg = dataclasses.replace(cfg, **absolute)
    saved = {"study": study_id, "tracking_uri": tracking.configure(), "cfg": dataclasses.asdict(cfg)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda temp: temp.write_text(json.dumps(saved)))
    return path


def run_cell(job: CellJob, node: str = "", stages=STAGES) -> str:
    """Run one cell in its run; returns the run's status as the store has it afterwards (FINISHED or FAILED).
    `node` (the engine's name for the machine) is recorded in the run's `study_node` tag; `stages` maps a stage to
    the function that runs its cells (tests and benchmarks pass their own)."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # a job's log is a file: no progress bars in it
    study_id, cfg = load_study(job.config)
    if machines.from_environment().follower:  # another node of a multi-node pre-training: node 0 keeps the run
        follow_pretrain(job.run_id, cfg.num_processes)
        return "FOLLOWED"
    if node:
        tracking.set_run_tag(job.run_id, "study_node", node)
    cells = {cell.key: cell for cell in plan(cfg)}  # pure: no store is read
    ledger = Ledger(study_id, list(cells.values()))
    for key, run_id in job.needs.items():
        ledger.record(key, run_id)
    cell = ledger.resolve(cells.get(job.cell_key) or cells["analysis/"])  # the plan leaves the analysis' digest blank
    try:
        stages[cell.stage](Context(study_id, cfg, study_dir(cfg, study_id), ledger), cell, job.run_id)
    finally:
        tracking.fail_if_running(job.run_id)
    return tracking.run_status(job.run_id)
