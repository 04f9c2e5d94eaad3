"""One study run: check the settings, open the `study` run, work through the grid (with more workers when asked),
and say where the results are: the run's and the experiment's descriptions, and the study's closing lines.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.names import budget_label
from cyto_ssrl.progress import quiet_bars
from cyto_ssrl.study.claims import fail_dead_study_runs, heartbeat
from cyto_ssrl.study.config import check_settings, settings, study_dir, validate
from cyto_ssrl.study.presets import STUDY_AXES, StudyConfig
from cyto_ssrl.study.runner import Runner

PROJECT_NOTE = (
    "**cyto_ssrl**: how the positive:negative imbalance of the *unlabeled* pre-training pool affects self-supervised "
    "representation learning for cervical cytology (Liu et al., CSBJ 2026). Every step is a run: tiles, pools, "
    "pre-training (each backbone registered with its ratio), downstream linear probes and fine-tuning at label "
    "budgets, and one analysis run per study with the curves (`figures/`), tables (`tables/`) and paired tests "
    "(`stats/`)."
)


def run_study(cfg: StudyConfig, study_id: str, preset_name: str = "demo", workers: int = 1) -> Path:
    """Run (or continue, or grow) study `study_id`; returns the folder of its curves and tables.

    The call is one `study` run (under `mlflow run`, the run MLflow made). It works through the grid itself and,
    with workers > 1, starts workers - 1 more processes on the same grid.
    """
    validate(cfg, study_id, workers)
    check_settings(study_id, cfg)
    folder = study_dir(cfg, study_id)
    params = {
        "study": study_id,
        "preset": preset_name,
        "workers": workers,
        **settings(cfg),
        **{f"cfg.{axis}": getattr(cfg, axis) for axis in STUDY_AXES},
    }
    fail_dead_study_runs(study_id)
    tags = {"study": study_id, "heartbeat": time.time()}
    with quiet_bars(), tracking.stage_run("study", params, tags=tags, run_name=f"study-{study_id}"):
        run_id, experiment_id = tracking.active_run_info()
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / f"study-{run_id}.json"
        config_file.write_text(
            json.dumps({"study": study_id, "experiment_id": experiment_id, "cfg": dataclasses.asdict(cfg)}, indent=1)
        )
        extra = [
            subprocess.Popen(
                [sys.executable, "-m", "cyto_ssrl.study.runner", str(config_file), "--parent", run_id],
                env=tracking.tracking_env(),
            )
            for _ in range(workers - 1)
        ]
        worker = Runner(study_id, cfg, run_id, experiment_id, progress=True)
        with heartbeat(run_id):
            failed = worker.run()
            failed_workers = sum(process.wait() != 0 for process in extra)
        if failed or failed_workers:
            raise CytoError(
                f"study {study_id}: {_failures(failed)} and {failed_workers} other worker(s) failed; "
                f"run the same command again to retry them"
            )
        missing = worker.unfinished()
        if missing:
            raise CytoError(f"study {study_id}: {len(missing)} cell(s) not finished, e.g. {missing[0]}")
        analysis_run = worker.ledger.current[worker.cells[-1].key]
        tracking.set_tags({"analysis_dir": folder / "analysis", "analysis_run_id": analysis_run})
        describe(study_id, cfg, preset_name, experiment_id, analysis_run, len(worker.cells))
    print(f"study {study_id}: {len(worker.cells)} cells done; curves and tables in {folder / 'analysis'}")
    print(tracking.browse_hint(experiment_id))
    return folder / "analysis"


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
