"""Pre-training throughput: the project's full step (loading + augmentation + step) against a bare in-memory loop.

    python benchmarks/pretrain_throughput.py [--presets tiny-mae,tiny-simclr] [--steps 20] [--workers 2] [--repeats 3]

Both sides use the same method, model, batch and input size in one run. The bare loop feeds tensors already in
memory to forward/backward/step; the project's side runs `cyto_ssrl.train.train_one_epoch` on a real pool of tile
files through the data loader and the cytology augmentations, and times its second epoch (the first warms up).
The two sides alternate `repeats` times and the medians are compared: on a shared machine one side's single run
can be 10 % off. Target: ratio >= 0.9 (the pipeline keeps the model fed). Peak memory: resident set size on
CPU, allocated device memory on a GPU. Pass `--presets paper-mae,paper-simclr --mixed-precision bf16` on a GPU
for the paper presets.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS, SyntheticConfig
from cyto_ssrl.data.pools import TileImages
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.data.transforms import MultiView
from cyto_ssrl.methods import build_method
from cyto_ssrl.methods.config import PRETRAIN_PRESETS
from cyto_ssrl.pretrain import pretrain_loop
from cyto_ssrl.train import make_loader, set_loader_epoch, train_one_epoch


def bare_images_per_s(method, accelerator, batch: int, img_size: int, steps: int) -> float:
    views = [torch.randn(batch, 3, img_size, img_size, device=accelerator.device) for _ in method.view_kinds]
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(method, optimizer)
    for i in range(steps + 2):
        if i == 2:  # the first steps warm up allocators and kernels
            _sync(accelerator)
            start = time.perf_counter()
        with accelerator.autocast():
            loss = model(views)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    _sync(accelerator)
    return steps * batch / (time.perf_counter() - start)


def project_images_per_s(method, accelerator, paths: list[str], cfg, steps: int) -> float:
    """Times one whole epoch of `steps` batches after a warm-up epoch, as `fit` runs them: the epoch's wait for its
    first batch counts, and no batch is prefetched beyond the timed ones."""
    loop = pretrain_loop(cfg, accelerator.num_processes)
    dataset = TileImages(paths[: steps * loop.batch_size], MultiView(method.view_kinds, cfg.img_size))
    loader = make_loader(dataset, loop, accelerator)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(method, optimizer)
    for epoch in range(2):
        set_loader_epoch(loader, epoch, cfg.seed, 0)
        if epoch == 1:
            _sync(accelerator)
            start = time.perf_counter()
        train_one_epoch(model, loader, optimizer, accelerator, epoch, loop)
    _sync(accelerator)
    return steps * loop.batch_size / (time.perf_counter() - start)


def _sync(accelerator) -> None:
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(accelerator) -> float:
    if accelerator.device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny-mae,tiny-simclr")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=".", prefix=".pretrain-bench-") as tmp:
        tiles_cfg = preset(TILE_PRESETS, "tiny", synthetic=SyntheticConfig(n_slides=6, deposit_um=1500))
        manifest = make_tiles("synthetic", None, Path(tmp), tiles_cfg)
        print(f"medians of {args.repeats} alternating runs")
        print(f"{'preset':<16}{'batch':>6}{'img':>5}{'bare img/s':>12}{'project img/s':>15}{'ratio':>7}{'peak MB':>9}")
        for name in args.presets.split(","):
            cfg = preset(PRETRAIN_PRESETS, name, num_workers=args.workers, mixed_precision=args.mixed_precision)
            paths = list(manifest["path"]) * (1 + cfg.batch_size * args.steps // len(manifest))
            accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
            bare, project = [], []
            for _ in range(args.repeats):
                set_seed(0)
                bare.append(bare_images_per_s(build_method(cfg), accelerator, cfg.batch_size, cfg.img_size, args.steps))
                set_seed(0)
                project.append(project_images_per_s(build_method(cfg), accelerator, paths, cfg, args.steps))
            bare_median, project_median = statistics.median(bare), statistics.median(project)
            print(
                f"{name:<16}{cfg.batch_size:>6}{cfg.img_size:>5}{bare_median:>12.1f}{project_median:>15.1f}"
                f"{project_median / bare_median:>7.2f}{peak_memory_mb(accelerator):>9.0f}"
                f"  (runs: {', '.join(f'{p / b:.2f}' for b, p in zip(bare, project))})"
            )


if __name__ == "__main__":
    main()
