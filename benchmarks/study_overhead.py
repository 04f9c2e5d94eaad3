"""The study driver's own cost per cell, and the analysis' cost per run, as the grid grows.

    python benchmarks/study_overhead.py [--cells 100,1000,5000] [--runs 2500,5000,10000]

1. Grids of about 100, 1,000 and 5,000 cells whose stages do nothing but open and close their tracked run, run by the
   local executor on a SQLite store: the bookkeeping time per cell (creating the run, tagging its job, polling,
   settling) on a first run, and a second run of the same study (everything done: the ledger's one read).
   Goal: flat per cell as the grid grows, under 0.5 s per cell.
2. `analyze` on stores holding 2,500, 5,000 and 10,000 finished downstream runs of one study (2 methods x 2 modes x
   5 budgets x 10 ratios x resamplings): seconds, and seconds per 1,000 runs. Goal: under a minute at 10,000, linear.

Stores live in /dev/shm where there is one (SQLite syncs every commit to disk otherwise), removed afterwards.
The SLURM and Ray executors add their engines' own start-up per job on top (a Python process that imports torch and
MLflow); their tests (tests/study/test_slurm.py, test_ray.py) show it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis.report import analyze
from cyto_ssrl import tracking
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.study.executors.local import LocalExecutor
from cyto_ssrl.study.job import save_study
from cyto_ssrl.study.plan import STAGES, plan
from cyto_ssrl.study.presets import StudyConfig
from cyto_ssrl.study.runner import Runner


def tracked_run_only(ctx, cell, run_id: str) -> None:
    """A cell that does nothing but its tracked run, leaving the outputs later cells would read."""
    with tracking.stage_run(cell.stage, {}, run_id=run_id):
        tracking.set_tags({"pool_path": "-", "model_uri": "models:/none/1"})


def grid(n_cells: int, manifest: Path) -> StudyConfig:
    """About `n_cells` cells: R pools, R pre-trainings, R x k downstream draws and the analysis."""
    ratios = 10 if n_cells <= 1000 else 50
    resamples = max(1, n_cells // ratios - 2)
    labels = tuple(f"1:{r}" for r in range(1, ratios + 1))
    return StudyConfig(
        ratios=labels,
        methods=("mae",),
        modes=("linear",),
        budgets=(50,),
        resamples=resamples,
        manifest=str(manifest),
        external="",
        representation=False,
    )


def drive(study_id: str, cfg: StudyConfig, folder: Path) -> float:
    start = time.perf_counter()
    with tracking.stage_run("study", {}, {"study": study_id}) as parent:
        config = save_study(folder / f"{study_id}.json", study_id, cfg)
        executor = LocalExecutor(stages=dict.fromkeys(STAGES, tracked_run_only))
        failed = Runner(study_id, cfg, config, executor, (parent.info.run_id, parent.info.experiment_id)).run()
    assert not failed, failed
    return time.perf_counter() - start


def driver_overhead(sizes: list[int], folder: Path) -> None:
    manifest = folder / "manifest.parquet"
    manifest.touch()
    print(f"{'cells':>6} {'first run':>10} {'per cell':>9} {'run again':>10} {'per cell':>9}")
    for n in sizes:
        cfg = grid(n, manifest)
        cells = len(plan(cfg))
        first = drive(f"grid{n}", cfg, folder)
        again = drive(f"grid{n}", cfg, folder)
        print(f"{cells:>6} {first:>9.1f}s {first / cells:>8.3f}s {again:>9.1f}s {again / cells:>8.4f}s", flush=True)


def add_downstream_runs(client: MlflowClient, experiment: str, resamples: range) -> int:
    """Finished downstream runs of study `big` for the given resamplings of the full grid; returns how many."""
    n = 0
    for method, backbone in (("mae", "vit_base"), ("simclr", "resnet50")):
        for mode in ("linear", "finetune"):
            for budget in (100, 50, 10, 5, 1):
                for r in (1, 2, 5, 10, 20, 50, 100, 500, 1000, 10000):
                    for resample in resamples:
                        tags = {
                            "stage": "downstream",
                            "study": "big",
                            "method": method,
                            "backbone": backbone,
                            "ratio": f"1:{r}",
                            "ratio_r": str(r),
                            "model_name": f"cyto-{method}-{backbone}",
                            "model_version": "1",
                        }
                        run_id = client.create_run(experiment, tags=tags).info.run_id
                        score = 0.9 - 0.01 * len(str(r)) - 0.002 * (100 - budget) / 10 + 0.001 * (resample % 7)
                        metrics = [Metric(f"eval/{m}", score, 0, 0) for m in METRIC_NAMES]
                        params = [Param("mode", mode), Param("budget", str(budget)), Param("resample", str(resample))]
                        client.log_batch(run_id, metrics=metrics, params=[*params, Param("seed", str(resample))])
                        client.set_terminated(run_id, "FINISHED")
                        n += 1
    return n


def analysis_time(sizes: list[int], folder: Path) -> None:
    client = MlflowClient()
    experiment = client.create_experiment("big")
    per_resample = 2 * 2 * 5 * 10
    done = 0
    print(f"{'runs':>6} {'analyze':>9} {'per 1,000 runs':>15}")
    for n in sizes:
        target = -(-n // per_resample)  # resamplings needed for n runs
        built = done // per_resample
        done += add_downstream_runs(client, experiment, range(built, target))
        start = time.perf_counter()
        analyze("big", folder / f"analysis-{done}")
        seconds = time.perf_counter() - start
        print(f"{done:>6} {seconds:>8.1f}s {seconds / done * 1000:>14.2f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="100,1000,5000")
    parser.add_argument("--runs", default="2500,5000,10000")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None, prefix="overhead-"))
    try:
        os.chdir(scratch)
        for part, (name, sizes) in enumerate((("driver", args.cells), ("analysis", args.runs))):
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / f'{name}.db'}"
            tracking.configure()
            print(f"\n{part + 1}. {name}")
            (driver_overhead if name == "driver" else analysis_time)([int(n) for n in sizes.split(",") if n], scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
