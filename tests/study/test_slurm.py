"""A tiny study on a real SLURM cluster (.ci/slurm-up's one node) through submitit: every cell a job, the same
tables as the local executor's, a killed driver that submits nothing twice, and a preempted pre-training that goes
on from its checkpoint in the same run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from analysis.query import downstream_results
from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.executors.base import Resources
from cyto_ssrl.study.executors.slurm import SlurmExecutor
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan

from ..helpers import ROOT, micro

pytestmark = pytest.mark.slow


def small(manifest, **changes):
    """One ratio, MAE, two resamplings of one budget, no baseline: 5 cells, each a SLURM job."""
    return micro(manifest, ratios=("1:1",), external="", output="studies", **changes)


def slurm_jobs(study: str) -> dict[str, str]:
    """Cell key -> the SLURM job id its run records."""
    runs = cell_runs(study)
    jobs = zip(runs["key"], tracking.tag(runs, "study_job"))
    return {key: job.removeprefix("slurm:") for key, job in jobs if isinstance(job, str)}  # tagged once submitted


def sacct(job_ids) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)], capture_output=True, text=True
    ).stdout
    return dict(line.split("|") for line in out.splitlines() if line)


def jobs_started_in(folder) -> set[str]:
    """Every SLURM job (array tasks one by one) submitted from `folder`, as accounting lists them."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", "-S", "now-1days", "-o", "JobID,WorkDir"], capture_output=True, text=True
    ).stdout
    return {line.split("|")[0] for line in out.splitlines() if line.endswith(f"|{folder}")}


def test_a_study_on_slurm_runs_every_cell_as_a_job_to_the_local_executors_tables(slurm, served, manifest):
    run_study(small(manifest), "on-local")
    run_study(small(manifest, executor="slurm"), "on-slurm")
    jobs = slurm_jobs("on-slurm")
    cells = {cell.key for cell in plan(small(manifest))[:-1]}
    assert {key for key in jobs if not key.startswith("analysis/")} == cells and len(jobs) == len(cells) + 1
    # The two resamplings went as one job array: ARRAY_0 and ARRAY_1.
    arrays = {job.partition("_")[0] for key, job in jobs.items() if key.startswith("downstream/")}
    assert len(arrays) == 1 and all("_" in jobs[k] for k in jobs if k.startswith("downstream/"))
    for _ in range(30):  # accounting lags the job's end by a moment
        states = sacct(jobs.values())
        if set(states.values()) == {"COMPLETED"} and len(states) == len(jobs):
            break
        time.sleep(2)
    assert set(states.values()) == {"COMPLETED"} and len(states) == len(jobs), states
    assert set(tracking.tag(cell_runs("on-slurm"), "study_node")) == {os.uname().nodename.split(".")[0]}
    columns = ["mode", "budget", "resample", "acc", "auc", "f1"]
    local = downstream_results("on-local")[columns].sort_values(["resample"]).reset_index(drop=True)
    on_slurm = downstream_results("on-slurm")[columns].sort_values(["resample"]).reset_index(drop=True)
    assert len(local) == 2 and local.equals(on_slurm), (local, on_slurm)


def test_a_request_no_node_can_satisfy_is_refused_before_any_job(slurm, manifest, tmp_path):
    executor = SlurmExecutor(small(manifest, executor="slurm"), tmp_path, None)
    with pytest.raises(CytoError, match=r"no job of this study can ever start: one asks for 1 node\(s\) with 8 GPU"):
        executor.check([Resources(cpus=8, gpus=8)])


def start_driver(preset, study: str, cwd, log):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    command = [sys.executable, "-m", "entrypoints.study", "--preset", str(preset), "--study", study]
    return subprocess.Popen(
        command + ["--executor", "slurm"], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log
    )


def wait_for(condition, what: str, driver, timeout_s: float = 300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before {what}"
        value = condition()
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def test_a_killed_driver_started_again_submits_no_cell_twice(slurm, served, manifest, tmp_path):
    preset = tmp_path / "small.json"
    preset.write_text(json.dumps(vars(small(manifest))))
    with open(tmp_path / "driver.log", "w") as log:
        first = start_driver(preset, "killed", tmp_path, log)
        # Killed (SIGKILL: no clean-up) once the pre-training job is in SLURM's hands.
        pretraining = lambda: any(key.startswith("pretrain/") for key in slurm_jobs("killed"))  # noqa: E731
        wait_for(pretraining, "the pre-training job", first)
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = start_driver(preset, "killed", tmp_path, log)
        assert second.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    runs = cell_runs("killed")
    assert runs["key"].is_unique and set(runs["status"]) == {"FINISHED"}
    # Every job the two drivers submitted is one cell's: SLURM ran no cell twice.
    ours = set(slurm_jobs("killed").values())
    submitted = jobs_started_in(tmp_path)
    assert submitted == ours and len(ours) == len(plan(small(manifest)))
    study_runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'")
    assert sorted(study_runs["status"]) == ["FAILED", "FINISHED"]


def test_a_requeued_pretraining_goes_on_from_its_checkpoint_and_registers_once(slurm, served, manifest, tmp_path):
    epochs = 8
    cfg = small(manifest, executor="slurm", pretrain_overrides={"epochs": epochs, "batch_size": 16, "num_workers": 0})
    preset = tmp_path / "small.json"
    preset.write_text(json.dumps({k: v for k, v in vars(cfg).items() if k != "executor"}))
    with open(tmp_path / "driver.log", "w") as log:
        driver = start_driver(preset, "requeued", tmp_path, log)

        def checkpointed():  # the job's run has a checkpoint of an epoch before the last
            runs = cell_runs("requeued", "pretrain/mae/1:1/s0")
            job_dir = tracking.tag(runs, "job_dir").dropna()
            marker = (job_dir.map(lambda d: os.path.join(d, "epoch.json"))).tolist()
            return marker and os.path.exists(marker[0]) and json.load(open(marker[0]))["epoch"] < epochs - 2

        wait_for(checkpointed, "a checkpoint of the pre-training", driver, 600)
        job = slurm_jobs("requeued")["pretrain/mae/1:1/s0"]
        subprocess.run(["scontrol", "requeue", job], check=True)  # as a preemption does
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    run = cell_runs("requeued", "pretrain/mae/1:1/s0")
    assert len(run) == 1 and run["status"].iloc[0] == "FINISHED"  # the same run, finished
    steps = [m.step for m in MlflowClient().get_metric_history(run["run_id"].iloc[0], "train/loss")]
    assert sorted(set(steps)) == list(range(epochs)) and steps.count(0) == 1  # went on; epoch 0 was not trained again
    versions = MlflowClient().search_model_versions(f"run_id = '{run['run_id'].iloc[0]}'")
    assert len(versions) == 1
    restarts = subprocess.run(
        ["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", job], capture_output=True, text=True
    ).stdout
    assert "REQUEUED" in restarts or "PREEMPTED" in restarts, restarts
