"""The one training loop (Hugging Face Accelerate), shared by pre-training and downstream fine-tuning.

`model(batch)` returns the loss: an SSL method on a list of views, or a classifier on (images, labels). The lr
follows MAE's recipe: linear warm-up then half-cosine, set every iteration; lr = blr x global batch / 256 unless
given. Metrics are reduced over processes before they are reported; the caller logs them on the main process.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cyto_ssrl.data.transforms import normalize_images
from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import disk_full, write_atomic
from cyto_ssrl.progress import progress_bar


@dataclass
class LoopConfig:
    """What the loop needs of a stage's config (PretrainConfig and DownstreamConfig both provide these)."""

    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    grad_accum_steps: int
    num_workers: int
    seed: int


def stage_accelerator(**settings) -> Accelerator:
    """An Accelerator with exactly these settings (precision, accumulation ...), also when an earlier stage of this
    process made one with others. Accelerate keeps one state per process: after an in-process bf16 pre-training a
    plain Accelerator() would silently run in bf16 too, and the reverse order raises. A process that `accelerate
    launch` started (WORLD_SIZE set) makes one Accelerator only, and its process group must stay, so it is left be.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()  # Accelerate's own reset (its tests use it); the device state is kept
        GradientState._reset_state()
    return Accelerator(**settings)


def absolute_lr(blr: float, lr: float | None, global_batch: int) -> float:
    """MAE's scaling rule: lr = blr x global batch / 256, unless an absolute lr is given."""
    return lr if lr else blr * global_batch / 256


def lr_at(epoch: float, cfg: LoopConfig) -> float:
    """Warm-up then half-cosine decay to min_lr, at a fractional epoch."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_loader(
    dataset: Dataset,
    cfg: LoopConfig,
    accelerator: Accelerator,
    shuffle: bool = True,
    drop_last: bool = True,
    collate_fn=None,
) -> DataLoader:
    """A loader whose order and augmentations depend only on (seed, epoch), so a resumed run sees the same data.

    Each process reads its own shard (`_SeededSampler`, a DistributedSampler); `set_loader_epoch` moves it on.
    Workers persist across epochs: restarting them every epoch forks the whole training process again, which
    costs tens of ms per epoch plus copy-on-write page faults in the trainer (see benchmarks/pretrain_throughput.py).
    Persistent workers keep their RNG between epochs, so every sample is augmented under its own seed instead.
    """
    sampler = _SeededSampler(
        dataset,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        shuffle=shuffle,
        seed=cfg.seed,
        drop_last=drop_last,
    )
    if len(dataset) // accelerator.num_processes < cfg.batch_size and drop_last:
        raise CytoError(
            f"{len(dataset)} images cannot fill one batch of {cfg.batch_size} on each of "
            f"{accelerator.num_processes} process(es); lower batch_size"
        )
    # On a CPU device the workers share cores with the model's intra-op threads; a preempted thread stalls the
    # whole parallel op, so there the workers only take CPU the model leaves idle.
    worker_init_fn = _lower_priority if accelerator.device.type == "cpu" else None
    return DataLoader(
        _SeededDataset(dataset),
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=drop_last,
        generator=torch.Generator(),
        collate_fn=collate_fn,
        persistent_workers=cfg.num_workers > 0,
        worker_init_fn=worker_init_fn,
    )


class _SeededSampler(DistributedSampler):
    """Yields (index, seed): the seed of a sample's augmentations is a function of (seed, epoch, index) alone,
    so it does not depend on the number of workers, which worker loads the sample, or what ran before."""

    def __iter__(self):
        for index in super().__iter__():
            yield index, ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index) % 2**63


class _SeededDataset(Dataset):
    """`dataset[index]` under its sample's seed. The RNG is forked so that, with num_workers=0, augmentation
    draws leave the model's random stream (masks, dropout) as it was."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone draws the augmentations. torch.manual_seed would also queue a seed for every
            # CUDA device, recording a stack trace each time: 0.15-0.5 ms a sample, 10-30 % of SimCLR's loading.
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def _lower_priority(worker_id: int) -> None:
    os.nice(19)


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int, rank: int) -> None:
    loader.sampler.set_epoch(epoch)
    # Seeds of worker processes, which start once per run; augmentations are seeded per sample by the sampler.
    loader.generator.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)


def train_one_epoch(
    model,
    loader: DataLoader,
    optimizer,
    accelerator: Accelerator,
    epoch: int,
    cfg: LoopConfig,
    after_step: Callable[[int, int], None] | None = None,
    bar: tqdm | None = None,
) -> float:
    """One pass over `loader`; returns the loss averaged over steps and processes."""
    model.train()
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    running = torch.zeros((), device=accelerator.device)
    for i, batch in enumerate(loader):
        step = epoch * steps_per_epoch + i
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step / steps_per_epoch, cfg)
        with accelerator.accumulate(model):
            loss = model(_to_device(batch, accelerator.device))
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
        if not torch.isfinite(mean_loss):  # every process sees the reduced value, so all stop together
            raise CytoError(f"loss is {mean_loss.item()} at epoch {epoch} step {i}; lower the lr or check the data")
        running += mean_loss
        if after_step is not None and accelerator.sync_gradients:
            after_step(step + 1, total_steps)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    return (running / steps_per_epoch).item()


def _to_device(batch, device):
    """The batch on the device; uint8 tensors are pre-training views, normalised there (see data/transforms)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return normalize_images(batch) if batch.dtype == torch.uint8 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def fit(
    model,
    loader: DataLoader,
    optimizer,
    accelerator: Accelerator,
    cfg: LoopConfig,
    checkpoint_dir: Path | None,
    checkpoint_every: int = 1,
    resume: bool = False,
    after_step=None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> None:
    """Train for cfg.epochs, saving Accelerate state every `checkpoint_every` epochs; `resume` continues from it."""
    start = load_checkpoint(accelerator, checkpoint_dir) if resume else 0
    total = (cfg.epochs - start) * len(loader)
    # Closed however training ends, so an error (a NaN loss) is printed on a line of its own, not after the bar.
    with progress_bar(accelerator.is_main_process, total=total, desc="training", unit="step") as bar:
        for epoch in range(start, cfg.epochs):
            set_loader_epoch(loader, epoch, cfg.seed, accelerator.process_index)
            loss = train_one_epoch(model, loader, optimizer, accelerator, epoch, cfg, after_step, bar)
            if on_epoch_end is not None:
                on_epoch_end(epoch, loss)
            if checkpoint_dir is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                save_checkpoint(accelerator, checkpoint_dir, epoch)


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, epoch: int) -> None:
    """Each checkpoint in a folder of its own; epoch.json, replaced in one rename once the folder is whole, names
    the newest. A job killed while saving leaves the previous checkpoint as it was."""
    state = f"state-{epoch}"
    try:
        accelerator.save_state(str(checkpoint_dir / state))
    except BaseException as exc:  # no half-written folder stays behind
        full = isinstance(exc, Exception) and disk_full(checkpoint_dir)  # asked before its space is freed
        shutil.rmtree(checkpoint_dir / state, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(checkpoint_dir / state)) from exc
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(
            checkpoint_dir / "epoch.json", lambda temp: temp.write_text(json.dumps({"epoch": epoch, "state": state}))
        )
        for old in checkpoint_dir.glob("state-*"):
            if old.name != state:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    """The files of the newest checkpoint in `checkpoint_dir` (its state folder, then epoch.json); [] if none."""
    marker = checkpoint_dir / "epoch.json"
    if not marker.exists():
        return []
    return [checkpoint_dir / json.loads(marker.read_text())["state"], marker]


def load_checkpoint(accelerator: Accelerator, checkpoint_dir: Path | None) -> int:
    """Restore model, optimizer and RNG states; returns the first epoch still to train."""
    files = [] if checkpoint_dir is None else checkpoint_files(checkpoint_dir)
    if not files:
        raise CytoError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
    accelerator.load_state(str(files[0]))
    return json.loads(files[1].read_text())["epoch"] + 1
