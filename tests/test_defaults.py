"""A new user's first hour: every entry point with its defaults on the embedded default, as `mlflow run . -e NAME`
runs it (the same CLI, every parameter left at its MLproject default)."""

from __future__ import annotations

import importlib
import json
import sys

import mlflow
import pandas as pd
import pytest

from cyto_ssrl.downstream.config import PAPER_BUDGETS

from .helpers import micro

MODEL = "models:/cyto-mae-vit_tiny@r1"  # what `pretrain` registers with its defaults


def run_entry(name: str, *argv: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    importlib.import_module(f"entrypoints.{name}").run()


def finished(stage: str) -> pd.DataFrame:
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.stage = '{stage}'")
    assert set(runs["status"]) == {"FINISHED"}, runs[["tags.mlflow.runName", "status"]]
    return runs


@pytest.mark.slow
def test_every_entry_point_runs_with_its_defaults(store, monkeypatch, tmp_path):
    run_entry("tiles", monkeypatch=monkeypatch)
    [tiles] = finished("tiles")["tags.manifest"]
    counts = pd.read_parquet(tiles).query("partition == 'downstream'")["label"].value_counts()
    assert counts["positive"] == counts["negative"] >= 175  # 1:1, and a 1 % budget needs 350 tiles

    run_entry("pools", monkeypatch=monkeypatch)
    run_entry("pretrain", monkeypatch=monkeypatch)
    assert len(finished("tiles")) == 1  # pools and pretrain took the synthetic default tiled above
    # downstream and tune need the model to evaluate; everything else at its default: 5 budgets x 5 resamplings.
    run_entry("downstream", "--model-uri", MODEL, monkeypatch=monkeypatch)
    budget_runs = finished("downstream").dropna(subset=["params.budget"])
    assert sorted(budget_runs["params.budget"].astype(float).unique()) == sorted(PAPER_BUDGETS)
    assert len(budget_runs) == 5 * 5
    run_entry("tune", "--model-uri", MODEL, monkeypatch=monkeypatch)
    assert finished("tune")["params.tune_budget"].dropna().unique().tolist() == ["1"]

    # The study's own defaults are the 10-minute demo (README command 1); a small grid under the id `demo` lets
    # analyze run with its defaults, which read study `demo`.
    preset = tmp_path / "small.json"
    grid = micro(tiles, ratios=("1:1",), representation=False, resamples=1, external="")
    preset.write_text(json.dumps({k: v for k, v in vars(grid).items() if k != "output"}))
    run_entry("study", "--preset", str(preset), "--study", "demo", monkeypatch=monkeypatch)
    run_entry("analyze", monkeypatch=monkeypatch)
    assert len(finished("analysis")) == 2  # the study's own, and the one analyze made
    assert (tmp_path / "outputs" / "analysis" / "demo" / "README.md").is_file()
