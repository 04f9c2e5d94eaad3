"""Faults really caused: a full disk (a small tmpfs mounted by the test, as root) while a feature cache, a training
checkpoint or a tiling is written leaves the previous one whole and readable, and no half-written file behind; several
processes writing the same feature cache, pool or random-init weights file at once all succeed and leave one whole
file; a tracking server killed and restarted while runs log loses no metric point, and one that stays away ends the
run's process in one line."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from cyto_ssrl.cli import main
from cyto_ssrl.config import preset
from cyto_ssrl.downstream.features import cache_path, cached_features
from cyto_ssrl.methods import create_backbone
from cyto_ssrl.methods.config import PRETRAIN_PRESETS
from cyto_ssrl.stages.pools import run_pools
from cyto_ssrl.stages.tiles import run_tiles
from cyto_ssrl.study.cells import random_init_weights
from cyto_ssrl.train import load_checkpoint, save_checkpoint, stage_accelerator

from .helpers import ROOT, free_port, start_server

WRITERS = 4


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, removed afterwards."""
    assert os.geteuid() == 0, "these tests mount a small tmpfs: run them as root (CI does)"
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk, leave: int = 0) -> None:
    """Write until the disk is full, then give back `leave` bytes."""
    with open(disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = (disk / "filler").stat().st_size
    os.truncate(disk / "filler", max(0, size - leave))


def test_a_full_disk_leaves_the_previous_feature_cache_whole(small_disk):
    key = {"model_name": "m", "model_version": "1", "partition": "evaluation", "preprocessing": "p", "tiles": "a"}
    first = torch.arange(1000.0).reshape(100, 10)
    cached_features(key, lambda: first, small_disk)
    fill(small_disk)
    newer = {**key, "tiles": "b"}  # the same file, for other tiles: to be replaced
    with pytest.raises(OSError) as failed:
        cached_features(newer, lambda: torch.zeros(100_000, 10), small_disk)
    assert failed.value.errno == errno.ENOSPC
    stored = torch.load(cache_path(small_disk, key), weights_only=True)
    assert stored["key"] == key and torch.equal(stored["features"], first)
    assert sorted(p.name for p in small_disk.iterdir()) == sorted([cache_path(small_disk, key).name, "filler"])


def test_a_full_disk_leaves_the_previous_checkpoint_whole(small_disk):
    accelerator = stage_accelerator()
    model = torch.nn.Linear(100, 100)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    save_checkpoint(accelerator, small_disk, 0)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fill(small_disk)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):
        save_checkpoint(accelerator, small_disk, 1)
    assert sorted(p.name for p in small_disk.iterdir()) == ["epoch.json", "filler", "state-0"]
    assert load_checkpoint(accelerator, small_disk) == 1  # the epoch after the one saved
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


PAGE = 4096  # tmpfs counts whole pages: a 64 px tile takes one


def tile_bytes(manifest: pd.DataFrame) -> dict[str, bytes]:
    return {path: open(path, "rb").read() for path in manifest["path"]}


@pytest.mark.parametrize("full_at", ["tiles", "manifest"])
def test_a_full_disk_while_tiling_leaves_the_previous_tiles_and_manifest_whole(
    store, small_cohort, small_disk, capsys, full_at
):
    slides, out = small_cohort.parent / "slides", small_disk / "out"
    _, manifest_path = run_tiles("slides", str(slides), str(out), "tiny", balance=())
    old = pd.read_parquet(manifest_path)
    old_tiles = tile_bytes(old)
    # Tiles at another JPEG quality: the same paths with other bytes, so tiles replaced without their manifest show.
    # Room for half of them, or for all of them and not the manifest written after them.
    room = len(old) * PAGE // 2 if full_at == "tiles" else len(old) * PAGE + 2 * PAGE
    fill(small_disk, leave=room)
    with pytest.raises(SystemExit) as failed:
        main(lambda: run_tiles("slides", str(slides), str(out), "tiny", balance=(), jpeg_quality=50))
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]  # after MLflow's and the progress bars' lines
    assert failed.value.code == 2 and error.startswith("error: no space left on device") and "Traceback" not in stderr
    if full_at == "manifest":
        assert "manifest.parquet" in error  # the disk filled after the last tile: the case a pair switch is for
    assert pd.read_parquet(out / "manifest.parquet").equals(old) and tile_bytes(old) == old_tiles
    assert sorted(p.relative_to(out).as_posix() for p in (out / "tiles").rglob("*.jpg")) == sorted(
        p.relative_to(out).as_posix() for p in map(Path, old["path"])
    )
    assert len(list(out.glob(".tiles-*"))) == 1 and not list(out.rglob("*.tmp"))


def at_once(writer, *args) -> None:
    """`writer(*args)` in WRITERS processes at the same time; an exception in any of them fails the test.

    Forked, not spawned: a spawned process spends seconds importing torch before it writes anything, so the writers
    would hardly overlap on a small machine.
    """
    with multiprocessing.get_context("fork").Pool(WRITERS, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pool.starmap(writer, [args] * WRITERS)


def leftovers(folder) -> list:
    """Temporary files a writer left behind (write_atomic's are hidden and end in .tmp)."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def cache_key(tiles: str) -> dict[str, str]:
    return {"model_name": "m", "model_version": "1", "partition": "evaluation", "preprocessing": "p", "tiles": tiles}


def features_of(key: dict[str, str]) -> torch.Tensor:
    return torch.full((2000, 64), float(ord(key["tiles"])))


def write_features(folder, rounds: int) -> None:
    # Two keys of one cache file, taken in turn: most calls find the other key's features and replace the file while
    # other processes read or replace it too.
    for i in range(rounds):
        key = cache_key("ab"[(i + os.getpid()) % 2])
        assert torch.equal(cached_features(key, lambda k=key: features_of(k), folder), features_of(key))


def test_processes_writing_one_feature_cache_at_once_all_succeed(tmp_path):
    at_once(write_features, tmp_path, 40)
    stored = torch.load(cache_path(tmp_path, cache_key("a")), weights_only=True)
    assert stored["key"] in (cache_key("a"), cache_key("b")) and torch.equal(
        stored["features"], features_of(stored["key"])
    )
    assert leftovers(tmp_path) == []


def write_pools(manifest, output, rounds: int) -> None:
    for _ in range(rounds):
        _, path, digest = run_pools(str(manifest), "1:2", pool_size=64, output_dir=str(output))
        assert pd.read_parquet(path)["tile_id"].is_unique


def test_processes_writing_one_pool_at_once_all_succeed(store, small_cohort, tmp_path):
    # First in this process: it also creates the tracking store, which processes that all find it missing would
    # each try to create (MLflow's SQLite store is not made to be created by several at once).
    _, expected, _ = run_pools(str(small_cohort), "1:2", pool_size=64, output_dir=str(tmp_path / "expected"))
    at_once(write_pools, small_cohort, tmp_path / "pools", 3)
    (path,) = (tmp_path / "pools").iterdir()
    assert path.name == expected.name and pd.read_parquet(path).equals(pd.read_parquet(expected))
    assert leftovers(tmp_path / "pools") == []


def tiny_backbone_config():
    return preset(PRETRAIN_PRESETS, "tiny-mae", method="mae")


def write_random_init(folder, rounds: int) -> None:
    # One folder a round: every process finds no file in it and writes the same seeded weights at about the same time.
    cfg = tiny_backbone_config()
    for i in range(rounds):
        load_file(random_init_weights(cfg, folder / str(i)))  # whole, whichever process wrote it


def test_processes_writing_one_random_init_file_at_once_all_succeed(tmp_path):
    at_once(write_random_init, tmp_path, 6)
    cfg = tiny_backbone_config()
    torch.manual_seed(0)
    expected = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size).state_dict()
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 6 and leftovers(tmp_path) == []
    for path in files:
        stored = load_file(path)
        assert stored.keys() == expected.keys() and all(torch.equal(stored[k], expected[k]) for k in expected)


# A run that logs two metrics at every step through the project's tracking functions, under the entry points' main.
LOGGING_RUN = """
import sys, time
from cyto_ssrl import tracking
from cyto_ssrl.cli import main

def run():
    with tracking.stage_run("logging", {}) as run:
        print(run.info.run_id, flush=True)
        for step in range(int(sys.argv[1])):
            tracking.log_metrics({"a": step, "b": -step}, step=step)
            time.sleep(0.5)

main(run)
"""
STEPS = 40


def logging_run(uri: str, **env) -> subprocess.Popen:
    """The logging run, started in a process of its own; it prints its run id once the run is open."""
    command = [sys.executable, "-c", LOGGING_RUN, str(STEPS)]
    # Not the experiment an earlier test of this process chose (mlflow.set_experiment exports its id): the server's
    # store has none yet.
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env = {**inherited, "MLFLOW_TRACKING_URI": uri, **env}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def serve(port: int, folder: Path) -> subprocess.Popen:
    # A SQLite file: the store outlives the server.
    server = start_server(port, f"sqlite:///{folder / 'server.db'}", folder)
    if server is None:
        pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
    return server


def kill(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already killed
        os.killpg(server.pid, signal.SIGKILL)  # the server and its web workers, with no time to close anything
    server.wait()


@pytest.mark.slow
def test_a_tracking_server_restarted_while_runs_log_loses_no_point_and_one_gone_too_long_fails_in_one_line(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_WORKERS", "1")  # one web worker: the server starts again sooner on a busy machine
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [serve(port, tmp_path)]
    patient = logging_run(uri)  # MLflow's own retries: about 4 minutes
    hasty = logging_run(uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    try:
        patient_id, hasty_id = patient.stdout.readline().strip(), hasty.stdout.readline().strip()
        time.sleep(2)  # a few steps logged
        assert patient.poll() is None and hasty.poll() is None  # both killed mid-run
        kill(servers[0])
        _, hasty_err = hasty.communicate(timeout=120)
        time.sleep(2)
        assert patient.poll() is None  # still in its run, waiting for the server
        servers.append(serve(port, tmp_path))
        _, patient_err = patient.communicate(timeout=300)
    finally:  # nothing left running, whatever failed
        patient.kill()
        hasty.kill()
        for server in servers:
            kill(server)
    client = MlflowClient(f"sqlite:///{tmp_path / 'server.db'}")  # the server's store, read without it
    assert patient.returncode == 0, patient_err
    assert client.get_run(patient_id).info.status == "FINISHED"
    for key in ("a", "b"):
        assert Counter(m.step for m in client.get_metric_history(patient_id, key)) == dict.fromkeys(range(STEPS), 1)
    last = hasty_err.strip().splitlines()[-1]
    assert hasty.returncode == 2 and "Traceback" not in hasty_err
    assert last.startswith(f"error: tracking server {uri} stopped answering"), hasty_err[-2000:]
    assert client.get_run(hasty_id).info.status != "FINISHED"
