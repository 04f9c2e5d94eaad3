"""The project's own wiring: pins agree everywhere, MLproject entry points point at real scripts and read their
parameters as MLflow passes them."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from cyto_ssrl.cli import integer, optional_integer

from .conftest import ROOT


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        match = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_conda_env_pins_match_the_constraints_file():
    constraints = _pins((ROOT / "constraints.txt").read_text().splitlines())
    conda = _pins((ROOT / "conda.yaml").read_text().splitlines())
    assert {"torch", "torchvision", "mlflow", "timm"} <= conda.keys()
    assert {name: constraints.get(name) for name in conda} == conda


def test_every_entry_point_runs_an_existing_module():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    for name, entry in project["entry_points"].items():
        module = re.search(r"python -m (entrypoints\.\w+)", entry["command"]).group(1)
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), name


def test_whole_number_options_take_mlflow_floats_and_name_the_option_they_refuse(capsys):
    parser = argparse.ArgumentParser(prog="entry")
    parser.add_argument("--pool-size", type=integer)
    parser.add_argument("--tune-trials", type=optional_integer, default="")
    args = parser.parse_args(["--pool-size", "400.0"])  # MLflow passes numeric -P values as floats
    assert (args.pool_size, args.tune_trials) == (400, None)
    assert parser.parse_args(["--tune-trials", "3"]).tune_trials == 3
    for bad in ("1.5", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--tune-trials", bad])
        assert f"argument --tune-trials: '{bad}' is not a whole number" in capsys.readouterr().err
