"""Stages 2 and 3: the Accelerate loop, checkpoints and resume, the registry, and external backbones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from cyto_ssrl import train
from cyto_ssrl.data.config import SyntheticConfig
from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods import create_backbone
from cyto_ssrl.pretrain import BACKBONE_FILE
from cyto_ssrl.stages.pools import run_pools
from cyto_ssrl.stages.pretrain import register_external, run_pretrain

FAST = dict(epochs=2, batch_size=16, num_workers=0)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """A small synthetic tile manifest shared by this module's pre-training tests."""
    folder = tmp_path_factory.mktemp("tiles")
    from cyto_ssrl.config import preset
    from cyto_ssrl.data.config import TILE_PRESETS
    from cyto_ssrl.data.tiles import make_tiles

    cfg = preset(TILE_PRESETS, "tiny", synthetic=SyntheticConfig(n_slides=6, deposit_um=900, prevalence=0.3))
    make_tiles("synthetic", None, folder, cfg)
    return str(folder / "manifest.parquet")


def _backbone_state(job_dir) -> dict:
    return load_file(f"{job_dir}/{BACKBONE_FILE}")


def test_pretrain_registers_a_tagged_aliased_backbone(store, tiles, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # the run lasts seconds here
    run_id, uri = run_pretrain("simclr", "1:5", "tiny", manifest=tiles, pool_size=64, **FAST)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and len(run.data.metrics) >= 2
    assert run.data.tags["mlflow.runName"] == "simclr-resnet18@1:5"
    losses = [m.value for m in MlflowClient().get_metric_history(run_id, "train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= run.data.metrics.keys()
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["pool-1:5"]
    client = MlflowClient()
    version = client.get_model_version_by_alias("cyto-simclr-resnet18", "r5")
    assert uri == f"models:/cyto-simclr-resnet18/{version.version}"
    tags = version.tags
    expected = {
        "ratio": "1:5",
        "ratio_r": "5",
        "method": "simclr",
        "backbone": "resnet18",
        "pool_size": "64",
        "epochs": "2",
        "preset": "tiny-simclr",
        "pretrain_run_id": run_id,
    }
    assert {k: tags[k] for k in expected} == expected
    assert len(tags["pool_digest"]) == 16 and tags["tiles_run_id"] == ""  # manifest given as a file: no tiles run
    model = mlflow.pytorch.load_model("models:/cyto-simclr-resnet18@r5")
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 512)
    # The logged model is named by what it is and shows the last epoch's loss, not the first's.
    logged = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "simclr-resnet18-r5"
    assert [(m.key, m.step, m.value) for m in logged.metrics if m.key == "train/loss"] == [
        ("train/loss", 1, losses[-1])
    ]


def test_labels_never_reach_the_model(store, tiles):
    """Pre-training on the same pool with its labels shuffled gives bit-identical weights."""
    _, pool_path, _ = run_pools(tiles, "1:1", 48, seed=0)
    pool = pd.read_parquet(pool_path)
    shuffled = pool.assign(label=pool["label"].sample(frac=1, random_state=3).to_numpy()[::-1])
    shuffled_path = pool_path.with_name("shuffled.parquet")
    shuffled.to_parquet(shuffled_path)
    states = []
    for path in (pool_path, shuffled_path):
        run_id, _ = run_pretrain(
            "mae", "1:1", "tiny", pool=str(path), pool_size=48, epochs=1, batch_size=16, num_workers=0
        )
        states.append(_backbone_state(mlflow.get_run(run_id).data.tags["job_dir"]))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_resume_after_a_crash_gives_the_same_weights(store, tiles, monkeypatch):
    full_id, _ = run_pretrain("moco", "1:1", "tiny", manifest=tiles, pool_size=64, **FAST)
    real = train.train_one_epoch

    def crash_in_second_epoch(*args, **kwargs):
        if args[4] == 1:  # epoch index
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain("moco", "1:1", "tiny", manifest=tiles, pool_size=64, **FAST)
    crashed = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FAILED'")
    assert len(crashed) == 1
    assert len(MlflowClient().search_model_versions("name='cyto-moco-resnet18'")) == 1  # nothing registered
    monkeypatch.setattr(train, "train_one_epoch", real)
    resumed_id, uri = run_pretrain("moco", resume=crashed["run_id"].iloc[0])
    assert resumed_id == crashed["run_id"].iloc[0] and mlflow.get_run(resumed_id).info.status == "FINISHED"
    full = _backbone_state(mlflow.get_run(full_id).data.tags["job_dir"])
    resumed = _backbone_state(mlflow.get_run(resumed_id).data.tags["job_dir"])
    assert all(torch.allclose(full[k], resumed[k], atol=1e-6) for k in full)
    assert uri.endswith("/2")


def test_nan_loss_fails_the_run_and_registers_nothing(store, tiles, monkeypatch):
    from cyto_ssrl.methods.mae import MAE

    monkeypatch.setattr(MAE, "forward", lambda self, views: self.backbone(views[0]).sum() * float("nan"))
    with pytest.raises(CytoError, match="loss is nan"):
        run_pretrain("mae", "1:1", "tiny", manifest=tiles, pool_size=32, epochs=1, batch_size=16, num_workers=0)
    statuses = set(mlflow.search_runs(search_all_experiments=True)["status"])
    assert "FAILED" in statuses and mlflow.search_registered_models() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="byol"), "unknown method 'byol'"),
        (dict(method="mae", backbone="vgg99"), "unknown backbone 'vgg99'"),
        (dict(method="mae", mask_ratio=1.0), "mask"),
        (dict(method="mae", ratio="1/100"), "ratio '1/100' is not written 1:r"),
        (dict(method="mae", pool_size=100_000), "needs .* positive and .* negative ssrl tiles"),
        (dict(method="mae", resume="0" * 32), "no MLflow run with id"),
    ],
)
def test_bad_pretraining_requests(store, tiles, kwargs, message):
    with pytest.raises(CytoError, match=message):
        run_pretrain(manifest=tiles, **{"ratio": "1:1", **kwargs})
    assert mlflow.search_registered_models() == []


def test_external_backbone_from_a_local_weights_file(store, tmp_path, capsys):
    weights = create_backbone("resnet18", 64, 8).state_dict()
    save_file(weights, tmp_path / "imagenet_resnet18.safetensors")
    _, uri = register_external(str(tmp_path / "imagenet_resnet18.safetensors"), preset_name="tiny-simclr")
    printed = capsys.readouterr()
    assert "Created version" not in printed.err  # MLflow's own lines would cut through a study's progress bar
    assert f"registered {uri} as models:/cyto-external-resnet18@external" in printed.out + printed.err
    version = MlflowClient().get_model_version_by_alias("cyto-external-resnet18", "external")
    assert version.tags["ratio"] == "external" and version.tags["source"] == "imagenet_resnet18.safetensors"
    assert version.tags["baseline_for"] == "mae"  # the method whose preset it was registered with
    loaded = mlflow.pytorch.load_model(uri).state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    with pytest.raises(CytoError, match="do not exist"):
        register_external(str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_two_process_accelerate_launch(store, tiles):
    """A real `accelerate launch` with 2 CPU processes: one run, one registered version, a loadable model."""
    run_id, uri = run_pretrain(
        "mae", "1:10", "tiny", manifest=tiles, pool_size=64, num_processes=2, epochs=2, batch_size=16, num_workers=1
    )
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pretrain'")
    assert list(runs["run_id"]) == [run_id] and list(runs["status"]) == ["FINISHED"]
    assert len(MlflowClient().get_metric_history(run_id, "train/loss")) == 2  # main process only
    versions = MlflowClient().search_model_versions("name='cyto-mae-vit_tiny'")
    assert len(versions) == 1 and versions[0].tags["ratio"] == "1:10"
    assert MlflowClient().get_model_version_by_alias("cyto-mae-vit_tiny", "r10").version == versions[0].version
    model = mlflow.pytorch.load_model("models:/cyto-mae-vit_tiny@r10")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 192)


def test_each_stage_gets_the_precision_it_asked_for():
    """Accelerate keeps one state per process: a bf16 pre-training must not leave a later fine-tuning in bf16, and
    the reverse order must not raise."""
    from cyto_ssrl.train import stage_accelerator

    assert stage_accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    assert stage_accelerator().mixed_precision == "no"
    assert stage_accelerator(mixed_precision="bf16", gradient_accumulation_steps=2).gradient_accumulation_steps == 2
    assert stage_accelerator().gradient_accumulation_steps == 1


@pytest.mark.slow
def test_a_two_process_training_killed_mid_epoch_resumes_to_the_uninterrupted_weights(store, tiles):
    """A real `accelerate launch` of 2 processes with 2 data-loader workers each, killed with SIGKILL (the whole
    process group, as a lost node) after its first checkpoint: the run never shows FINISHED, nothing is registered,
    and `resume` ends with exactly the weights of an uninterrupted run of the same seed."""
    settings = dict(manifest=str(tiles), pool_size=64, num_processes=2, epochs=3, batch_size=8, num_workers=2)
    full_id, _ = run_pretrain("mae", "1:1", "tiny", **settings)
    code = f"from cyto_ssrl.stages.pretrain import run_pretrain; run_pretrain('mae', '1:1', 'tiny', **{settings!r})"
    killed = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 300
    run = pd.DataFrame()
    while time.time() < deadline and killed.poll() is None:
        runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'")
        run = runs[runs["tags.stage"] == "pretrain"] if "tags.stage" in runs else runs.iloc[:0]
        job_dir = run["tags.job_dir"].dropna() if "tags.job_dir" in run else []
        if len(job_dir) and (Path(job_dir.iloc[0]) / "epoch.json").exists():
            time.sleep(0.5)  # into the next epoch, its data-loader workers at work
            break
        time.sleep(0.2)
    assert killed.poll() is None, "the training ended before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    killed_id = run["run_id"].iloc[0]
    assert mlflow.get_run(killed_id).info.status == "RUNNING"  # never FINISHED
    assert MlflowClient().search_model_versions(f"run_id = '{killed_id}'") == []  # nothing registered
    resumed_id, uri = run_pretrain("mae", resume=killed_id, num_processes=2)
    assert resumed_id == killed_id and mlflow.get_run(killed_id).info.status == "FINISHED"
    full = _backbone_state(mlflow.get_run(full_id).data.tags["job_dir"])
    resumed = _backbone_state(mlflow.get_run(resumed_id).data.tags["job_dir"])
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # bitwise, on CPU
    assert len(MlflowClient().search_model_versions(f"run_id = '{killed_id}'")) == 1
