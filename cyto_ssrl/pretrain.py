"""Pre-training worker: what every process runs, in-process for one process or under `accelerate launch`.

    accelerate launch ... -m cyto_ssrl.pretrain JOB.json

The launcher (`cyto_ssrl.stages.run_pretrain`) owns the MLflow run and the registry; the worker trains, logs
per-epoch metrics to that run from the main process only, and leaves the encoder's weights in the job folder.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from accelerate import DistributedDataParallelKwargs
from accelerate.utils import set_seed
from safetensors.torch import load_file
from timm.optim import param_groups_weight_decay

from cyto_ssrl import tracking
from cyto_ssrl.data.pools import TileImages
from cyto_ssrl.data.transforms import MultiView
from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import save_weights, write_atomic
from cyto_ssrl.methods import build_method, create_backbone
from cyto_ssrl.methods.config import PretrainConfig
from cyto_ssrl.train import LoopConfig, absolute_lr, fit, make_loader, stage_accelerator

BACKBONE_FILE = "backbone.safetensors"


@dataclasses.dataclass
class PretrainJob:
    """Everything a worker needs, written as JSON into the job folder (which also holds the checkpoints)."""

    cfg: PretrainConfig
    pool_path: str
    run_id: str
    job_dir: str
    resume: bool = False

    def save(self) -> Path:
        text = json.dumps(dataclasses.asdict(self), indent=1)
        return write_atomic(Path(self.job_dir) / "job.json", lambda temp: temp.write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> PretrainJob:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, "cfg": PretrainConfig(**data["cfg"])})


def pretrain_loop(cfg: PretrainConfig, num_processes: int) -> LoopConfig:
    per_process = cfg.batch_size // (num_processes * cfg.grad_accum_steps)
    if per_process < 1 or per_process * num_processes * cfg.grad_accum_steps != cfg.batch_size:
        raise CytoError(
            f"batch_size {cfg.batch_size} does not split evenly over {num_processes} process(es) x "
            f"{cfg.grad_accum_steps} accumulation step(s)"
        )
    lr = absolute_lr(cfg.blr, cfg.lr, cfg.batch_size)
    return LoopConfig(
        epochs=cfg.epochs,
        batch_size=per_process,
        lr=lr,
        min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs,
        weight_decay=cfg.weight_decay,
        grad_accum_steps=cfg.grad_accum_steps,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
    )


def run_job(job: PretrainJob) -> None:
    cfg = job.cfg
    # Unused parameters are normal here (e.g. a ViT's cls token under MAE); DDP must not wait for their grads.
    accelerator = stage_accelerator(
        gradient_accumulation_steps=cfg.grad_accum_steps,
        mixed_precision=cfg.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(cfg.seed)  # the same initial weights on every process
    method = build_method(cfg)
    pool = pd.read_parquet(job.pool_path, columns=["path"])  # paths only: no label reaches the model
    dataset = TileImages(pool["path"], MultiView(method.view_kinds, cfg.img_size))
    loop = pretrain_loop(cfg, accelerator.num_processes)
    loader = make_loader(dataset, loop, accelerator)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(method, cfg.weight_decay), lr=loop.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(method, optimizer)

    def after_step(step: int, total: int) -> None:
        accelerator.unwrap_model(model).on_step_end(step, total)

    def on_epoch_end(epoch: int, loss: float) -> None:
        if accelerator.is_main_process:
            tracking.log_metrics(
                {"train/loss": loss, "train/lr": optimizer.param_groups[0]["lr"]}, step=epoch, run_id=job.run_id
            )

    fit(
        model,
        loader,
        optimizer,
        accelerator,
        loop,
        Path(job.job_dir),
        cfg.checkpoint_every,
        job.resume,
        after_step,
        on_epoch_end,
    )
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(model).backbone, Path(job.job_dir) / BACKBONE_FILE)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def load_backbone(cfg: PretrainConfig, job_dir: str | Path) -> torch.nn.Module:
    """The trained encoder, rebuilt as the plain timm model downstream uses."""
    backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
    backbone.load_state_dict(load_file(Path(job_dir) / BACKBONE_FILE))
    return backbone.eval()


if __name__ == "__main__":
    from cyto_ssrl.cli import main

    main(lambda: run_job(PretrainJob.load(sys.argv[1])))
