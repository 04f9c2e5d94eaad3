"""Stage 3 as a run: pre-train on a pool (in this process or through `accelerate launch`), then register the
backbone with its ratio; or register an external backbone from a weights file as a baseline."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from cyto_ssrl import machines, names, tracking
from cyto_ssrl.checks import one_of
from cyto_ssrl.config import flatten, preset
from cyto_ssrl.data.pools import parse_ratio, pool_digest, ratio_label, read_manifest
from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods import METHODS, build_method, create_backbone
from cyto_ssrl.methods.config import PRETRAIN_PRESETS, PretrainConfig, pretrain_preset_name
from cyto_ssrl.pretrain import PretrainJob, load_backbone, run_job
from cyto_ssrl.stages import registration
from cyto_ssrl.stages.pools import run_pools
from cyto_ssrl.train import checkpoint_files


def run_pretrain(
    method: str = "mae",
    ratio: str = "1:1",
    preset_name: str = "tiny-mae",
    manifest: str | None = None,
    pool: str | None = None,
    pool_size: int = 200,
    seed: int = 0,
    num_processes: int = 1,
    resume: str | None = None,
    init: str | None = None,
    output_dir: str = "outputs/pretrain",
    continue_from: str | None = None,
    run_id: str | None = None,
    **overrides,
) -> tuple[str, str]:
    """Stage 3 as a run: pre-train and register; returns (run id, registered model URI `models:/name/version`).

    `resume` continues a killed run in that run; `continue_from` (a failed run's job folder) starts a new run from
    the failed one's last checkpoint, as the study does when it re-runs a pre-training cell.
    """
    one_of("method", method, METHODS)  # before the preset: 'tiny' + an unknown method is no unknown preset
    if init:
        return register_external(init, method, preset_name, seed=seed, run_id=run_id, **overrides)
    if resume:
        return _resume_pretrain(resume, num_processes)
    preset_name = pretrain_preset_name(preset_name, method)
    cfg: PretrainConfig = preset(PRETRAIN_PRESETS, preset_name, method=method, seed=seed, **overrides)
    build_method(cfg)  # unknown method, backbone or bad settings fail here, before any run or pool exists
    r = parse_ratio(ratio)
    params = {
        "ratio": ratio_label(r),
        "ratio_r": r,
        "preset": preset_name,
        "pool_size": pool_size,
        "num_processes": num_processes,
        **flatten(cfg),
    }
    tags = {"method": cfg.method, "backbone": cfg.backbone, "ratio": ratio_label(r)}
    label = names.pretrained_label(cfg.method, cfg.backbone, ratio_label(r), cfg.seed)
    with tracking.stage_run("pretrain", params, tags, run_name=label, run_id=run_id, system_metrics=True) as run:
        pool_path = Path(pool) if pool else run_pools(manifest, ratio_label(r), pool_size, seed)[1]
        pool_table = read_manifest(pool_path)
        tracking.log_dataset(pool_table, pool_path, name=f"pool-{ratio_label(r)}", context="pretrain")
        job_dir = Path(output_dir).resolve() / run.info.run_id
        job_dir.mkdir(parents=True, exist_ok=True)
        job = PretrainJob(cfg, str(pool_path), run.info.run_id, str(job_dir))
        tracking.set_tags({"job_dir": job_dir, "pool_path": pool_path, "pool_digest": pool_digest(pool_table)})
        if continue_from:
            _take_checkpoint(Path(continue_from), job)
        job.save()  # what `resume` reads back
        _launch(job, num_processes)
        uri = _register(job, pool_table, preset_name)
    return run.info.run_id, uri


def _resume_pretrain(run_id: str, num_processes: int) -> tuple[str, str]:
    tags = tracking.run_tags(run_id)
    if "job_dir" not in tags or not (Path(tags["job_dir"]) / "job.json").exists():
        raise CytoError(f"run {run_id} has no pre-training job to resume")
    job = PretrainJob.load(Path(tags["job_dir"]) / "job.json")
    job.resume = True
    with tracking.stage_run("pretrain", {}, run_id=run_id, system_metrics=True) as run:
        _launch(job, num_processes)
        uri = _register(job, read_manifest(job.pool_path), tracking.run_params(run_id).get("preset", ""))
    return run.info.run_id, uri


def _take_checkpoint(failed_dir: Path, job: PretrainJob) -> None:
    """Move a failed run's last checkpoint of the same job into `job`'s folder and train on from it. Moved, not
    copied: a paper-size checkpoint is gigabytes, and should this run fail too, the next one takes it from here."""
    failed = PretrainJob.load(failed_dir / "job.json")
    same = json.loads(json.dumps(dataclasses.asdict(job.cfg))) == dataclasses.asdict(failed.cfg)
    if not same or failed.pool_path != job.pool_path:
        raise CytoError(f"the checkpoint in {failed_dir} is of another pre-training job (settings or pool differ)")
    for path in checkpoint_files(failed_dir):  # the state folder first: epoch.json names it
        os.replace(path, Path(job.job_dir) / path.name)
    job.resume = True
    tracking.set_tags({"continued_from": failed.run_id})


def _launch(job: PretrainJob, num_processes: int) -> None:
    """Train in this process, or in `num_processes` processes through a real `accelerate launch` (spread over the
    nodes of a multi-node SLURM job, see machines.py)."""
    where = machines.from_environment()
    if num_processes <= 1 and where.count == 1:
        run_job(job)
        return
    job_file = job.save()  # with resume set, when resuming
    if where.count > 1 and not where.follower:
        _launched_marker(Path(job.job_dir)).touch()  # the other nodes launch after this: they read the job as saved now
    env = tracking.tracking_env()
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # with --multi_gpu: N CPU processes joined by gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes)]
    cmd += ["--num_machines", str(where.count), "--machine_rank", str(where.rank)]
    cmd += ["--main_process_ip", where.main_address, "--main_process_port", str(where.port or machines.free_port())]
    cmd += ["--mixed_precision", job.cfg.mixed_precision, "--dynamo_backend", "no", "-m", "cyto_ssrl.pretrain"]
    result = subprocess.run([*cmd, str(job_file)], env=env)
    if result.returncode != 0:
        raise CytoError(f"accelerate launch with {num_processes} processes failed (exit {result.returncode})")


def follow_pretrain(run_id: str, num_processes: int, wait_s: float = 600) -> None:
    """A node other than the first of a multi-node pre-training job: wait until node 0 has launched the run's job,
    then train its share. The run, its checkpoints and the registration are node 0's."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        job_dir = tracking.run_tags(run_id).get("job_dir")
        if job_dir and (marker := _launched_marker(Path(job_dir))).exists():
            _launch(PretrainJob.load(marker.parent / "job.json"), num_processes)
            return
        time.sleep(5)
    raise CytoError(f"node 0 of this job did not launch run {run_id}'s training within {wait_s:.0f} s")


def _launched_marker(job_dir: Path) -> Path:
    """One marker per SLURM job and attempt, so a requeued job's other nodes wait for this attempt's launch."""
    return job_dir / f"launched-{os.environ.get('SLURM_JOB_ID', '0')}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"


def _register(job: PretrainJob, pool: pd.DataFrame, preset_name: str) -> str:
    r = parse_ratio(tracking.run_params(job.run_id)["ratio"])
    chosen = registration.pretrained(job.cfg, preset_name, job.run_id, pool, job.pool_path, r)
    return registration.register(load_backbone(job.cfg, job.job_dir), chosen, job.cfg.img_size)


def register_external(
    init: str,
    method: str = "mae",
    preset_name: str = "tiny",
    seed: int = 0,
    baseline_for: str | None = None,
    run_id: str | None = None,
    **overrides,
) -> tuple[str, str]:
    """A baseline backbone from a local weights file (ImageNet, CONCH ...), registered like a pre-trained one.

    The backbone is the preset's for `method`, unless overridden; `baseline_for` names the methods it is the
    baseline of (tag `baseline_for`, default `method`), so two baselines never merge when runs are grouped."""
    path = Path(init)
    if not path.is_file():
        raise CytoError(f"init weights {init} do not exist (nothing is downloaded: give a local file)")
    cfg: PretrainConfig = preset(PRETRAIN_PRESETS, pretrain_preset_name(preset_name, method), seed=seed, **overrides)
    backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
    state = (
        load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    )
    missing, _ = backbone.load_state_dict(state, strict=False)
    if missing:
        raise CytoError(
            f"{init} does not fit backbone {cfg.backbone}: {len(missing)} weights missing, e.g. {missing[0]}"
        )
    params = {"init": str(path.resolve()), "preset": preset_name, **flatten(cfg)}
    baseline_for = baseline_for or method
    run_tags = {"method": names.EXTERNAL, "ratio": names.EXTERNAL, "baseline_for": baseline_for}
    label = names.external_label(cfg.backbone, path.name)
    with tracking.stage_run("pretrain", params, run_tags, run_name=label, run_id=run_id) as run:
        chosen = registration.external(cfg, preset_name, run.info.run_id, path.name, baseline_for)
        uri = registration.register(backbone, chosen, cfg.img_size)
    return run.info.run_id, uri
