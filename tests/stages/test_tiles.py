"""The tracked stage 1: its run's parameters, metrics and artifacts, a failed run, and `mlflow run . -e tiles`."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest

from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.tiles import run_tiles

from ..data.helpers import HERLEV_CELLS, _slides_folder, herlev_subset
from ..helpers import ROOT, local_env_path, mlflow_run


def test_tiles_run_is_tracked(synthetic_default):
    uri, run_id, manifest_path = synthetic_default
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tile_size"] == "64" and run.data.params["source"] == "synthetic"
    assert run.data.params["balance"] == "('downstream', 'evaluation')" and run.data.params["strict"] == "False"
    manifest = pd.read_parquet(manifest_path)
    metrics = run.data.metrics
    assert metrics["n_tiles"] == len(manifest) and metrics["slides_skipped"] == 0
    assert metrics["n_ssrl_dropped"] == 0 and min(metrics["n_downstream_dropped"], metrics["n_evaluation_dropped"]) > 0
    assert metrics["n_downstream_kept"] == (manifest["partition"] == "downstream").sum()
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiles-synthetic"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "manifest.parquet",
        "summary.md",
        "summary.csv",
        "summary_per_slide.csv",
        "summary_balance.csv",
        "skipped_slides.csv",
    } <= artifacts
    assert manifest.groupby("slide_id")["partition"].nunique().max() == 1
    # Generated slides keep their generated names (they identify nobody), so pools drawn in tile-id order are the
    # same on every clone; real slides are pseudonymous by default (tests/stages/test_patient_data.py).
    assert manifest["slide_id"].str.fullmatch(r"slide_\d{3}").all() and not any("private" in a for a in artifacts)
    assert not (manifest_path.parent / "private").exists()
    summary = (manifest_path.parent / "summary.md").read_text()
    assert "0 slide(s) skipped" in summary and "| downstream  | True " in summary


def test_failed_tiling_marks_the_run_failed(store, tmp_path):
    folder = _slides_folder(tmp_path, {"a.svs": "not a slide"})
    with pytest.raises(CytoError):
        run_tiles("slides", str(folder), str(tmp_path / "out"), "tiny")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]


@pytest.mark.slow
def test_mlflow_run_tiles_entry_point(store, tmp_path, shared_data):
    """The MLproject entry point through `mlflow run` (local env manager), and a one-line error from the CLI."""
    out = tmp_path / "herlev_tiles"
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    cmd = mlflow_run("tiles", "source=cells", f"input={folder}", f"output={out}", "balance=none")
    env = {**os.environ, "PATH": local_env_path()}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_parquet(out / "manifest.parquet")) == len(range(0, HERLEV_CELLS, 3))  # balance=none: every cell
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FINISHED"] and runs["params.source"].iloc[0] == "cells"
    assert runs["params.balance"].iloc[0] == "none" and runs["metrics.slides_skipped"].iloc[0] == 0

    bad = subprocess.run(
        [sys.executable, "-m", "entrypoints.tiles", "--source", "slides", "--input", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: input folder {tmp_path / 'nope'} does not exist"
