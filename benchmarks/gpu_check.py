"""The first thing to run on a GPU machine: every code path on CUDA at bf16, then the paper presets' speed and memory.

    python benchmarks/gpu_check.py [--steps 20] [--skip-speed]

1. Paths: in a temporary folder with its own SQLite store, the real stages run in this process on the GPU: the
   synthetic default is tiled, every method (MAE, SimCLR, DINO, MoCo) pre-trains its tiny preset for one epoch at
   bf16 and is registered, and one backbone is fine-tuned and linear-probed (features encoded on the GPU). Each
   stage must finish and score finite metrics; the fine-tuning that follows a bf16 pre-training in the same process
   must run in full precision (Accelerate keeps one state per process, see train.stage_accelerator).
2. Speed and memory: the paper presets at bf16 with the paper's batch per GPU (MAE ViT-B/16, mask 0.5, 192 per
   GPU; SimCLR ResNet-50, 256 per GPU; the paper trained on 2x RTX 3090, 24 GB each): images/s of a bare
   in-memory step, of the project's full step (data loading and augmentations included), their ratio, and the
   peak allocated GPU memory beside the 3090's 24 GB.

On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

PAPER_PER_GPU = {"paper-mae": 192, "paper-simclr": 256}  # the paper: 2x RTX 3090, global batch 384 and 512
RTX_3090_GB = 24


def check_paths(folder: Path) -> None:
    """Every stage on the GPU, in this process, on a private store."""
    os.chdir(folder)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    from cyto_ssrl.data.config import TILE_PRESETS
    from cyto_ssrl.methods import METHODS
    from cyto_ssrl.stages.downstream import run_downstream
    from cyto_ssrl.stages.pretrain import run_pretrain
    from cyto_ssrl.stages.tiles import run_tiles
    from cyto_ssrl.tracking import find_runs

    start = time.perf_counter()
    # Deflate, not JPEG, inside the synthetic TIFFs: a bare GPU image may lack imagecodecs (tiles are JPEG still).
    synthetic = dataclasses.replace(TILE_PRESETS["tiny"].synthetic, compression="zlib")
    _, manifest = run_tiles(synthetic=synthetic)
    print(f"tiles: synthetic default in {time.perf_counter() - start:.0f} s")
    uris = {}
    for method in METHODS:
        start = time.perf_counter()
        _, uris[method] = run_pretrain(
            method,
            "1:1",
            "tiny",
            manifest=str(manifest),
            pool_size=128,
            epochs=1,
            mixed_precision="bf16",
            num_workers=4,
        )
        print(f"pretrain {method:<7} bf16: registered {uris[method]} in {time.perf_counter() - start:.0f} s")
    for mode in ("finetune", "linear"):
        start = time.perf_counter()
        run_downstream(uris["mae"], mode, budgets=(50,), resamples=1)
        runs = find_runs("downstream", "FINISHED", params={"mode": mode, "budget": "50"})
        scores = runs[[c for c in runs if c.startswith("metrics.eval/")]].iloc[0]
        if not all(math.isfinite(v) for v in scores):
            raise SystemExit(f"{mode}: non-finite evaluation metrics {scores.to_dict()}")
        print(
            f"downstream {mode:<8}: acc {scores['metrics.eval/acc']:.3f}, auc {scores['metrics.eval/auc']:.3f}"
            f" in {time.perf_counter() - start:.0f} s"
        )


def check_precision(device: str) -> None:
    from cyto_ssrl.train import stage_accelerator

    assert stage_accelerator(mixed_precision="bf16").mixed_precision == "bf16"
    finetune = stage_accelerator()
    assert finetune.mixed_precision == "no" and finetune.device.type == device, finetune.device
    print(f"precision: a bf16 stage then a full-precision one in one process, on {device}: each got its own")


def check_speed(folder: Path, steps: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from pretrain_throughput import bare_images_per_s, project_images_per_s

    from cyto_ssrl.config import preset
    from cyto_ssrl.data.config import TILE_PRESETS, SyntheticConfig
    from cyto_ssrl.data.tiles import make_tiles
    from cyto_ssrl.methods import build_method
    from cyto_ssrl.methods.config import PRETRAIN_PRESETS
    from cyto_ssrl.train import stage_accelerator

    tiles = make_tiles(
        "synthetic",
        None,
        folder / "speed",
        preset(TILE_PRESETS, "tiny", synthetic=SyntheticConfig(n_slides=6, compression="zlib")),
    )
    gpu = torch.cuda.get_device_properties(0)
    print(
        f"\n{gpu.name}, {gpu.total_memory / 2**30:.0f} GB; bf16; {steps} timed steps; paper: 2x RTX 3090 "
        f"({RTX_3090_GB} GB)"
    )
    print(
        f"{'preset':<14}{'batch/GPU':>10}{'bare img/s':>12}{'project img/s':>15}{'ratio':>7}{'peak GB':>9}"
        f"{'fits a 3090':>13}"
    )
    for name, batch in PAPER_PER_GPU.items():
        cfg = preset(PRETRAIN_PRESETS, name, batch_size=batch, mixed_precision="bf16")
        accelerator = stage_accelerator(mixed_precision="bf16")
        torch.cuda.reset_peak_memory_stats()
        bare = bare_images_per_s(build_method(cfg), accelerator, batch, cfg.img_size, steps)
        peak = torch.cuda.max_memory_allocated() / 2**30
        paths = list(tiles["path"]) * (1 + batch * steps // len(tiles))
        project = project_images_per_s(build_method(cfg), accelerator, paths, cfg, steps)
        print(
            f"{name:<14}{batch:>10}{bare:>12.0f}{project:>15.0f}{project / bare:>7.2f}{peak:>9.1f}"
            f"{'yes' if peak < RTX_3090_GB else 'no':>13}"
        )
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per preset")
    parser.add_argument("--skip-speed", action="store_true", help="check the code paths only")
    parser.add_argument("--cpu", action="store_true", help="run the path checks on the CPU (to try this script)")
    args = parser.parse_args()
    if not (torch.cuda.is_available() or args.cpu):
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing to check")
        return
    device = "cpu" if args.cpu else "cuda"
    with tempfile.TemporaryDirectory(prefix="cyto-gpu-check-") as tmp:
        folder = Path(tmp)
        check_precision(device)
        check_paths(folder)
        if not (args.skip_speed or args.cpu):
            check_speed(folder, args.steps)
    print(f"gpu_check: every path ran on {device}")


if __name__ == "__main__":
    main()
