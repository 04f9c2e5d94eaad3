"""Linear-probe grid: the feature cache against re-encoding the training tiles every epoch.

    python benchmarks/probe_grid.py [--budgets 100,50,10,5,1] [--resamples 5] [--downstream-tiles 350]

Builds its own tiny backbone in a temporary store (synthetic cohort -> tiles -> pool -> one epoch of MAE on a
ViT-tiny/16 at 64 px, registered), then probes the grid of budgets x resamples twice in one run, with the draws,
seeds and settings of `run_downstream` (tiny preset) but without its MLflow logging:

- cached: the project's path. Each partition is encoded once into the on-disk feature cache (timed from an empty
  cache), then every probe trains and is scored on those tensors;
- re-encoding: the same `train_probe`, but no features are kept: each probe re-encodes its training tiles every
  epoch (eval transform, as the cache does) and its validation and evaluation tiles once.

Both must give the same evaluation metrics (the script exits 1 when they differ by more than --tolerance).
Target: the cached grid >= 20x faster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cyto_ssrl.data.config import SyntheticConfig
from cyto_ssrl.data.pools import read_manifest
from cyto_ssrl.downstream.budgets import budget_label, budget_seed, draw_budget, parse_budgets
from cyto_ssrl.downstream.features import encode
from cyto_ssrl.downstream.metrics import METRIC_NAMES, binary_metrics
from cyto_ssrl.downstream.probe import probe_scores, train_probe
from cyto_ssrl.downstream.setup import Setup, budget_loop, evaluation_scores, prepare, train_on_split
from cyto_ssrl.stages.pretrain import run_pretrain
from cyto_ssrl.stages.tiles import run_tiles
from cyto_ssrl.train import LoopConfig

# A demo cohort rich in positive cells, most of its tiles in the downstream partition: 350 balanced downstream
# tiles, the fewest that give budget 1 % its 4 tiles (1 train + 1 validation per class), need 175 positive ones.
COHORT = SyntheticConfig(n_slides=8, deposit_um=1500, prevalence=0.6)
PARTITIONS = {"ssrl": 1, "downstream": 3, "evaluation": 1}


def register_backbone(folder: Path) -> tuple[str, Path]:
    """Tile the synthetic cohort and pre-train a tiny MAE on it; returns (registered model URI, manifest)."""
    _, manifest = run_tiles("synthetic", None, str(folder / "tiles"), "tiny", synthetic=COHORT, partitions=PARTITIONS)
    # Patches of 16 px (16 per tile) keep re-encoding every epoch within minutes on a 2-core CPU; a slower
    # backbone would only widen the gap the cache makes.
    _, uri = run_pretrain(
        "mae", "1:1", manifest=str(manifest), pool_size=64, epochs=1, batch_size=16, patch_size=16, num_workers=0
    )
    return uri, manifest


def balanced_manifest(manifest: Path, n_tiles: int, path: Path) -> Path:
    """A copy of the manifest whose downstream partition holds n_tiles // 2 positive and as many negative tiles.

    Budget 100 % draws the whole partition at 1:1, so the partition must be balanced, as the paper's 20,000 +
    20,000 tiles are; the other downstream tiles are left out.
    """
    tiles = read_manifest(manifest)
    downstream = tiles["partition"] == "downstream"
    kept = []
    for label in ("positive", "negative"):
        members = tiles[downstream & (tiles["label"] == label)]
        if len(members) < n_tiles // 2:
            raise SystemExit(
                f"the cohort has {len(members)} {label} downstream tiles; --downstream-tiles "
                f"{n_tiles} needs {n_tiles // 2}"
            )
        kept.append(members.sample(n_tiles // 2, random_state=0))
    pd.concat([tiles[~downstream], *kept], ignore_index=True).to_parquet(path)
    return path


def cached_probe(setup: Setup, train: pd.DataFrame, val: pd.DataFrame, loop: LoopConfig) -> np.ndarray:
    """The project's path: features of both partitions from the cache, which their first use fills."""
    head, _ = train_on_split(setup, "linear", train, val, loop)
    return evaluation_scores(setup, "linear", head)


def reencoding_probe(setup: Setup, train: pd.DataFrame, val: pd.DataFrame, loop: LoopConfig) -> np.ndarray:
    """The same probe keeping no features: training tiles encoded every epoch, the others once."""

    def features(tiles: pd.DataFrame) -> torch.Tensor:
        return encode(setup.backbone, tiles, setup.img_size, setup.cfg.eval_batch_size, setup.cfg.num_workers)

    def labels(tiles: pd.DataFrame) -> torch.Tensor:
        return torch.tensor(tiles["y"].to_numpy())

    head, _ = train_probe(lambda: features(train), labels(train), features(val), labels(val), loop)
    return probe_scores(head, features(setup.evaluation))


def probe_grid(setup: Setup, budgets, resamples: int, probe) -> tuple[np.ndarray, float]:
    """(budgets x resamples, metrics) evaluation metrics of every probe, and the seconds the grid took."""
    cfg, settings = setup.cfg, setup.cfg.linear
    y = setup.evaluation["y"].to_numpy()
    metrics = []
    start = time.perf_counter()
    for budget in budgets:
        for resample in range(resamples):
            train, val = draw_budget(setup.downstream, budget, resample, cfg.seed)
            seed = budget_seed(cfg.seed, budget, resample)
            loop = budget_loop(settings, budget, len(train), settings.blr, None, seed, cfg.num_workers)
            scores = probe(setup, train, val, loop)
            metrics.append([binary_metrics(y, scores)[name] for name in METRIC_NAMES])
    return np.array(metrics), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="100,50,10,5,1", help="percentages of the downstream partition")
    parser.add_argument("--resamples", type=int, default=5, help="draws of each budget")
    parser.add_argument(
        "--downstream-tiles",
        type=int,
        default=350,
        help="balanced downstream partition; 350 is the fewest that budget 1 %% can be drawn from",
    )
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest metric difference that agrees")
    args = parser.parse_args()
    budgets = parse_budgets(args.budgets)

    # In the working directory (on this machine /tmp creates files 20x slower), with a store of its own.
    with tempfile.TemporaryDirectory(dir=".", prefix=".probe-grid-bench-") as tmp, contextlib.chdir(tmp):
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path.cwd() / 'mlruns.db'}"
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            os.environ.pop(name, None)
        uri, manifest = register_backbone(Path.cwd())
        balanced = balanced_manifest(manifest, args.downstream_tiles, Path("balanced_manifest.parquet"))
        setup = prepare(uri, "tiny", str(balanced))
        for budget in budgets:  # infeasible budgets fail here, before anything is timed
            draw_budget(setup.downstream, budget, 0, setup.cfg.seed)
        encode(setup.backbone, setup.evaluation.head(64), setup.img_size)  # loads the backbone, warms up the kernels

        cached, cached_s = probe_grid(setup, budgets, args.resamples, cached_probe)
        reencoded, reencoded_s = probe_grid(setup, budgets, args.resamples, reencoding_probe)

    difference = float(np.abs(cached - reencoded).max())
    agree = difference <= args.tolerance
    print(
        f"grid: {len(budgets)} budgets ({', '.join(map(budget_label, budgets))} % of {len(setup.downstream)} "
        f"downstream tiles) x {args.resamples} resamples = {len(cached)} probes of "
        f"{setup.cfg.linear.epochs} epochs; {len(setup.evaluation)} evaluation tiles"
    )
    print(f"cached features, cache filled in this run : {cached_s:8.1f} s")
    print(f"re-encoding the training tiles every epoch : {reencoded_s:8.1f} s")
    print(f"ratio (target >= 20)                       : {reencoded_s / cached_s:8.1f}")
    print(
        f"metrics agree                              : {agree} (max abs difference {difference:.2g} over "
        f"{', '.join(METRIC_NAMES)})"
    )
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
