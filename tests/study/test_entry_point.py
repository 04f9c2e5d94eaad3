"""`mlflow run . -e study`: the real entry point on a small preset."""

from __future__ import annotations

import json
import os
import subprocess

import mlflow
import pytest

from ..helpers import local_env_path, micro, mlflow_run


@pytest.mark.slow
def test_mlflow_run_study_entry_point(tmp_path, manifest, store):
    """The real `mlflow run . -e study --env-manager local` on a small preset: it finishes, the values it used stand
    beside the parameters MLflow logged as given, and its closing lines give the address of the runs table."""
    preset = tmp_path / "micro.json"
    preset.write_text(
        json.dumps({k: v for k, v in vars(micro(manifest, representation=False, resamples=1)).items() if k != "output"})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    env["PATH"] = local_env_path()
    command = mlflow_run("study", f"preset={preset}", experiment="cli")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study_run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'study'").iloc[0]
    assert study_run["status"] == "FINISHED" and study_run["tags.study"] == "micro"
    # MLflow logs the parameters as given: an unset one reads as its MLproject default, the value used beside it.
    assert study_run["params.study"] == "preset" and study_run["params.used.study"] == "micro"
    assert study_run["params.ratios"] == "preset" and study_run["params.cfg.ratios"] == "('1:1', '1:2')"
    url = f"#/experiments/{study_run['experiment_id']}/runs?workflowType=machine_learning"
    assert url in done.stdout.strip().splitlines()[-1]
