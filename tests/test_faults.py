"""Faults really caused: a full disk (a small tmpfs mounted by the test, as root) while a feature cache or a
training checkpoint is written leaves the previous one whole and readable, and no half-written file behind."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
import torch

from cyto_ssrl.downstream.features import cache_path, cached_features
from cyto_ssrl.train import load_checkpoint, save_checkpoint, stage_accelerator


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, removed afterwards."""
    assert os.geteuid() == 0, "these tests mount a small tmpfs: run them as root (CI does)"
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk) -> None:
    """Write until the disk is full."""
    with open(disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


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
