"""One study run: check the settings, open the `study` run, work through the grid (with more workers when asked),
and say where the results are: the run's and the experiment's descriptions, and the study's closing lines.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.names import budget_label
from cyto_ssrl.progress import quiet_bars
from cyto_ssrl.study.config import check_settings, settings, study_dir, validate
from cyto_ssrl.study.executors import make_executor
from cyto_ssrl.study.executors.base import resources
from cyto_ssrl.study.job import save_study
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import STUDY_AXES, StudyConfig
from cyto_ssrl.study.runner import Runner

DRIVER = f"{socket.gethostname()}:{os.getpid()}"  # the study run's driver, so a second one is refused
PROJECT_NOTE = (
    "**cyto_ssrl**: how the positive:negative imbalance of the *unlabeled* pre-training pool affects self-supervised "
    "representation learning for cervical cytology (Liu et al., CSBJ 2026). Every step is a run: tiles, pools, "
    "pre-training (each backbone registered with its ratio), downstream linear probes and fine-tuning at label "
    "budgets, and one analysis run per study with the curves (`figures/`), tables (`tables/`) and paired tests "
    "(`stats/`)."
)


def run_study(cfg: StudyConfig, study_id: str, preset_name: str = "demo", workers: int | None = None) -> Path:
    """Run (or continue, or grow) study `study_id`; returns the folder of its curves and tables.

    The call is one `study` run (under `mlflow run`, the run MLflow made), whose process is the study's driver: it
    hands each ready cell to the executor `cfg.executor` names, at most `workers` at once (None: as many as the
    engine takes).
    """
    validate(cfg, study_id, workers)
    check_settings(study_id, cfg)
    folder = study_dir(cfg, study_id)
    executor = make_executor(cfg, folder, workers)
    if cfg.gpus is None:  # ask for GPUs where the engine has them
        executor.check([resources(cell, dataclasses.replace(cfg, gpus=False)) for cell in plan(cfg)])
        cfg = dataclasses.replace(cfg, gpus=executor.has_gpus())
    executor.check([resources(cell, cfg) for cell in plan(cfg)])
    take_over(study_id)
    params = {
        "study": study_id,
        "preset": preset_name,
        "workers": workers or "engine",
        "executor": cfg.executor,
        **settings(cfg),
        **{f"cfg.{axis}": getattr(cfg, axis) for axis in STUDY_AXES},
    }
    with (
        quiet_bars(),
        tracking.stage_run("study", params, tags={"study": study_id, "driver": DRIVER}, run_name=f"study-{study_id}"),
    ):
        run_id, experiment_id = tracking.active_run_info()
        config_file = save_study(folder / f"study-{run_id}.json", study_id, cfg)
        driver = Runner(study_id, cfg, config_file, executor, (run_id, experiment_id), progress=True)
        failed = driver.run()
        if failed:
            raise CytoError(f"study {study_id}: {_failures(failed)}; run the same command again to retry them")
        missing = driver.unfinished()
        if missing:
            raise CytoError(f"study {study_id}: {len(missing)} cell(s) not finished, e.g. {missing[0]}")
        analysis_run = driver.ledger.current[driver.ledger.resolve(driver.cells[-1]).key]
        tracking.set_tags({"analysis_dir": folder / "analysis", "analysis_run_id": analysis_run})
        describe(study_id, cfg, preset_name, experiment_id, analysis_run, len(driver.cells))
    print(f"study {study_id}: {len(driver.cells)} cells done; curves and tables in {folder / 'analysis'}")
    print(tracking.browse_hint(experiment_id))
    return folder / "analysis"


def take_over(study_id: str) -> None:
    """One driver per study. A RUNNING study run of this host whose process lives is a driver at work: refused. Any
    other (its process is gone, or it ran on another host, which no clock can tell alive) was killed: marked FAILED,
    and this driver takes its cells over, re-attaching to the jobs still queued or running."""
    runs = tracking.find_runs("study", "RUNNING", study=study_id)
    for run_id, driver in zip(runs.get("run_id", []), tracking.tag(runs, "driver") if not runs.empty else []):
        host, _, pid = (driver or "").partition(":")
        if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
            raise CytoError(
                f"study {study_id} is being run by process {pid} on this host (run {run_id}); wait for it "
                "or stop it first"
            )
        tracking.end_run(run_id, "FAILED")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(
    study_id: str, cfg: StudyConfig, preset_name: str, experiment_id: str, analysis_run: str, n_cells: int
) -> None:
    """Descriptions the UI shows: the study run's (what it is, where its results are) and the experiment's (the
    project, and the analysis run of each of its studies)."""
    analysis = f"[analysis-{study_id}]({tracking.runs_page(experiment_id, analysis_run)})"
    tracking.set_description(
        f"Study **{study_id}** (preset `{preset_name}`), {n_cells} cells: pools at {', '.join(cfg.ratios)}; "
        f"pre-training {', '.join(cfg.methods)} (seeds {', '.join(map(str, cfg.seeds))}); downstream "
        f"{', '.join(cfg.modes)} at budgets {', '.join(map(budget_label, cfg.budgets))} % x {cfg.resamples} "
        f"resamplings.\n\nResults: the analysis run {analysis}: curves in its artifacts `figures/`, tables in "
        "`tables/`, paired tests in `stats/`, and a README.md that says what each file is.\n\nThe runs of this "
        f"study: search `tags.study = '{study_id}'`; group by `tags.model_label`, `params.mode`, `params.budget`; "
        "chart a metric such as `eval/acc` against the param `log10_ratio`."
    )
    tracking.set_experiment_description(experiment_id, experiment_note(experiment_id, {study_id: analysis_run}))


def experiment_note(experiment_id: str, latest: dict[str, str]) -> str:
    """The project in a paragraph, and each study of the experiment with a link to its newest analysis run."""
    studies = tracking.find_runs("study", "FINISHED", experiment_id=experiment_id)
    if not studies.empty:
        studies = studies.assign(
            analysis_run=tracking.tag(studies, "analysis_run_id"), study=tracking.tag(studies, "study")
        )
        for run in studies.dropna(subset=["analysis_run"]).sort_values("start_time", ascending=False).itertuples():
            latest.setdefault(run.study, run.analysis_run)
    lines = [
        f"- **{sid}**: analysis run [analysis-{sid}]({tracking.runs_page(experiment_id, rid)})"
        for sid, rid in sorted(latest.items())
    ]
    return "\n".join([PROJECT_NOTE, "", "Studies:", *lines])


def _failures(failed: dict[str, str]) -> str:
    """The failed cells in a line that stays readable when a whole column of the grid failed for one reason."""
    if not failed:
        return "no cell failed here"
    key, error = next(iter(failed.items()))
    others = f"; {len(failed) - 1} more, each reported above" if len(failed) > 1 else ""
    return f"{len(failed)} cell(s) failed here (first {key}: {error}{others})"
