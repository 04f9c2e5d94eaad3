"""A tiny study on a real two-node Ray cluster on 127.0.0.1 (`ray start --head`, then a second `ray start --address`
with its own CPU): cells run on both nodes, and stopping the second node mid-study loses and duplicates nothing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cyto_ssrl import tracking
from cyto_ssrl.study.ledger import cell_runs
from cyto_ssrl.study.plan import plan

from ..helpers import ROOT, free_port, micro

pytestmark = pytest.mark.slow
RAY = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]  # the `ray` CLI of this interpreter


def ray_node(*options: str, log) -> subprocess.Popen:
    """One Ray node in the foreground (--block) in a session of its own, so the test can stop it and only it."""
    command = [*RAY, "start", "--block", "--num-gpus", "0", "--object-store-memory", "100000000", *options]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def node_ids(address: str) -> dict[str, str]:
    """Each live node's id, keyed 'second' for the node started with the custom resource, else 'head'."""
    script = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False); print(json.dumps({{"
        "('second' if 'second_node' in n['Resources'] else 'head'): n['NodeID'] for n in ray.nodes() if n['Alive']}))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_nodes(tmp_path):
    """A head node and a second node, one CPU each; yields (address, {'head': id, 'second': id}, second's process)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    log = (tmp_path / "ray.log").open("w")  # closed at the end, after the nodes that write to it
    head_options = ["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false"]
    head = ray_node(*head_options, "--temp-dir", temp_dir, log=log)
    nodes = [head]
    try:
        for _ in range(60):
            if subprocess.run([*RAY, "status", "--address", address], capture_output=True).returncode == 0:
                break
            time.sleep(1)
        second = ray_node("--address", address, "--num-cpus", "1", "--resources", '{"second_node": 1}', log=log)
        nodes.append(second)
        for _ in range(60):
            ids = node_ids(address)
            if len(ids) == 2:
                break
            time.sleep(1)
        assert len(ids) == 2, (tmp_path / "ray.log").read_text()[-2000:]
        yield address, ids, second
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
        subprocess.run([*RAY, "stop", "--force"], capture_output=True)  # what --block left behind
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("server", ["postgres"], indirect=True)  # the tracking server's store: a real PostgreSQL
def test_a_study_on_two_ray_nodes_survives_losing_one(served, manifest, two_nodes, tmp_path):
    address, ids, second = two_nodes
    cfg = micro(manifest, executor="ray", ray_address=address, output="studies")
    preset = tmp_path / "micro.json"
    preset.write_text(json.dumps(vars(cfg)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    command = [sys.executable, "-m", "entrypoints.study", "--preset", str(preset), "--study", "two-nodes"]
    second_tag = f"ray:{ids['second'][:12]}"
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
        deadline = time.time() + 600
        while time.time() < deadline:  # a cell finished on the second node, and another is running there
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            runs = cell_runs("two-nodes")
            on_second = runs[tracking.tag(runs, "study_node") == second_tag] if not runs.empty else runs
            if {"FINISHED", "RUNNING"} <= set(on_second["status"]):
                break
            time.sleep(0.5)
        else:
            pytest.fail("no cell ran on the second node")
        lost = on_second.loc[on_second["status"] == "RUNNING", "key"].tolist()
        os.killpg(second.pid, signal.SIGKILL)  # the node is gone, with the cell it was running
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    runs = cell_runs("two-nodes")
    assert runs["key"].is_unique and set(runs["status"]) == {"FINISHED"}  # nothing lost, nothing run twice
    assert len(runs) == len(plan(cfg))
    nodes = tracking.tag(runs, "study_node")
    assert set(nodes) == {f"ray:{ids['head'][:12]}", second_tag}  # cells ran on both nodes
    assert set(nodes[runs["key"].isin(lost)]) == {f"ray:{ids['head'][:12]}"}  # what the lost node ran went again


def test_a_request_no_ray_node_can_satisfy_is_refused_before_any_task(two_nodes):
    """Asked in a process of its own: Ray, once initialised, stays with the process that asked."""
    address, _, _ = two_nodes
    code = (
        "from cyto_ssrl.study.executors.ray_cluster import RayExecutor; from cyto_ssrl.study.executors.base import "
        f"Resources; from cyto_ssrl.study.presets import StudyConfig; RayExecutor(StudyConfig(ray_address={address!r}),"
        " None).check([Resources(cpus=1, gpus=8)])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "CytoError: no cell of this study can ever start: one asks for 8 GPU(s)" in done.stderr, done.stderr[-2000:]
