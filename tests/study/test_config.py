"""Bad study input: one line before any run, failures summed up in one short line, an unreachable server."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from cyto_ssrl.errors import CytoError
from cyto_ssrl.study import launch
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.presets import STUDY_PRESETS, StudyConfig

from ..helpers import free_port


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: load_config("nope"), "unknown study preset 'nope'"),
        (lambda: run_study(load_config("demo", methods=("byol",)), "x"), "unknown method 'byol'"),
        (lambda: run_study(load_config("demo", ratios=("1-10",)), "x"), "is not written 1:r"),
        (lambda: run_study(load_config("demo", budgets=(150,)), "x"), "not in (0, 100]"),
        (lambda: run_study(load_config("demo", modes=("linear", "knn")), "x"), "unknown downstream mode"),
        (lambda: run_study(StudyConfig(downstream_preset="huge"), "x"), "unknown preset 'huge'"),
        (lambda: run_study(StudyConfig(tune_trials=-1), "x"), "tune_trials must be 0 (no tuning) or more, got -1"),
        (lambda: run_study(StudyConfig(), "x", workers=2), "workers=2 runs cells at once on an engine"),
        (lambda: run_study(STUDY_PRESETS["paper"], "x"), "source 'slides' needs input"),
        (lambda: run_study(StudyConfig(), "it's"), 'study id "it\'s" may hold only'),
    ],
)
def test_bad_input_is_one_line_before_any_run(store, make, message):
    with pytest.raises(CytoError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make()
    assert mlflow.search_runs(search_all_experiments=True).empty
    assert not Path("outputs").exists()


def test_many_failed_cells_are_summed_up_in_one_short_line():
    failed = {
        f"downstream/pretrain/mae/1:1/s0/linear/b100/r{r}": "budget 100 % needs 31 positive tiles" for r in range(18)
    }
    line = launch._failures(failed)
    assert line.startswith("18 cell(s) failed here (first downstream/pretrain/mae/1:1/s0/linear/b100/r0: budget")
    assert "17 more" in line and len(line) < 200 and "\n" not in line


def test_an_unreachable_tracking_server_stops_the_study_before_any_work(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CytoError, match="is unreachable"):
        run_study(STUDY_PRESETS["demo"], "demo")
    assert not Path("outputs").exists()
