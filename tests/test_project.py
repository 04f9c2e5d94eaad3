"""The project's own wiring: pins agree everywhere, MLproject entry points point at real scripts."""

from __future__ import annotations

import re

import yaml

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
