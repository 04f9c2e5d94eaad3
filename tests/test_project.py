"""The project's own wiring: pins agree everywhere, MLproject entry points point at real scripts and read their
parameters as MLflow passes them."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest
import yaml

from cyto_ssrl.cli import integer, mlproject_entry, optional_integer, parse_params

from .helpers import ROOT


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


ENTRY_POINTS = ("tiles", "pools", "pretrain", "downstream", "tune", "study", "analyze")


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_mlproject_declares_each_entry_points_parameters_as_its_cli_does(name):
    """One declaration (the entry point's Params dataclass): MLproject must name the same parameters, with the same
    types and defaults, and pass every one of them to the CLI."""
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][name]
    expected = mlproject_entry(importlib.import_module(f"entrypoints.{name}").Params, f"entrypoints.{name}")
    assert list(declared["parameters"]) == list(expected["parameters"])
    for key, spec in expected["parameters"].items():
        given = declared["parameters"][key]
        assert given["type"] == spec["type"], key
        assert ("default" in given) == ("default" in spec), key
        if "default" in spec:
            assert _same(given["default"], spec["default"]), (key, given["default"], spec["default"])
    assert " ".join(declared["command"].split()) == expected["command"]


def _same(yaml_value, default) -> bool:
    if isinstance(default, bool):
        return str(yaml_value).lower() == str(default).lower()
    if isinstance(default, (int, float)):
        return float(yaml_value) == float(default)
    return str(yaml_value) == str(default)


def test_an_unset_word_reads_as_not_given_and_a_value_as_itself():
    from entrypoints.pretrain import Params

    defaults = parse_params(Params, "", [])
    assert (defaults.pool, defaults.epochs, defaults.manifest, defaults.method) == (None, None, None, "mae")
    given = parse_params(Params, "", ["--epochs", "3.0", "--pool", "p.parquet", "--manifest", ""])
    assert (given.epochs, given.pool, given.manifest) == (3, "p.parquet", None)


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
