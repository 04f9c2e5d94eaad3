"""Tiling throughput: the project's stage 1 against a bare OpenSlide read_region loop over the same tiles.

    python benchmarks/tiling.py [--slide PATH --mpp 0.25 | --deposit-um 2500] [--tile-size 256] [--workers 2]

Both sides cut the same tile grid of the same slide. The project's side includes the deposit check (planning),
read, resample to the target um/px, JPEG encode and write, spread over `workers` processes; the bare loop only
reads the regions, in one process and in the order the project's jobs read them. Target: project tiles/s per
worker >= 0.7 x bare tiles/s. That ratio is the project's own cost per tile on one core (printed from a 1-worker
run) times how far the machine's cores scale (printed from the bare loop on `workers` processes).

A third loop bounds what the project could reach on the machine: the bare loop plus only the work every tile needs
(the project's resample, JPEG encode and one file write), on `workers` processes, with no planning, no manifest
and no process pool handing out jobs. The project's rate over that loop's is its own overhead; that loop's rate
per process over the bare loop's is the best ratio per worker that this work allows on the machine.

The two sides alternate `repeats` times and the medians are reported: other processes on the machine slow
whichever side runs beside them. Tile files are created in the working directory, where real output goes, and
all are deleted only at the end: on an ext4 file system without a journal (this machine's) each new file scans
past the inodes deleted in the last minute or so, which makes creating a file up to 30x slower (1.5 ms instead of
0.05 ms). Back-to-back invocations pay that for the previous one's deletions; leave a couple of minutes between them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS, SyntheticConfig
from cyto_ssrl.data.cutting import job_keys, write_tiles
from cyto_ssrl.data.parallel import start_worker
from cyto_ssrl.data.slide_plan import plan_slides
from cyto_ssrl.data.slides import open_slide, resample_region
from cyto_ssrl.data.synthetic import generate_cohort


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(dir=".", prefix=".tiling-bench-") as tmp:
        folder = slide_folder(Path(tmp), args)
        cfg = preset(
            TILE_PRESETS,
            "paper",
            tile_size=args.tile_size,
            target_mpp=args.target_mpp,
            workers=args.workers,
            default_mpp=args.mpp,
            partitions={"ssrl": 1},
        )
        load = os.getloadavg()[0]
        times = {side: [] for side in ("plan", "project", "serial", "bare", "bare_parallel", "same_work")}
        for repeat in range(args.repeats):
            plan, geometry = time_once(folder, Path(tmp), repeat, cfg, args.workers, times)
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} cores)")
    report(len(plan), geometry, {side: statistics.median(t) for side, t in times.items()}, times, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", help="a slide to tile (default: one generated synthetic slide)")
    parser.add_argument(
        "--deposit-um",
        type=float,
        default=2500,
        help="cell-deposit diameter of the generated "
        "slide (2500: 708 tiles; 5000: 2908 tiles, generated in ~40 s with 6.4 GB)",
    )
    parser.add_argument("--mpp", type=float, help="um/px when the slide has none")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--target-mpp", type=float, default=0.293)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def slide_folder(tmp: Path, args) -> Path:
    """A folder holding the slide to tile: the given one (linked), or one generated synthetic slide."""
    folder = tmp / "slide"
    if args.slide:
        folder.mkdir()
        (folder / Path(args.slide).name).symlink_to(Path(args.slide).resolve())
    else:
        slide = SyntheticConfig(n_slides=1, positive_slide_fraction=0, deposit_um=args.deposit_um, mpps=(0.243,))
        generate_cohort(folder, slide)
    return folder


def time_once(folder: Path, tmp: Path, repeat: int, cfg, workers: int, times: dict):
    """One round of every side, alternating; appends each side's seconds to `times`; returns (plan, (level, side))."""
    plan, planning, total = project_tiling(folder, tmp / f"out{repeat}", cfg)
    times["plan"].append(planning)
    times["project"].append(total)
    path, level = plan["source_path"].iloc[0], int(plan["level"].iloc[0])
    side = round(plan["extent"].iloc[0] / open_slide(path).level_downsamples[level])
    coords = in_job_order(plan)
    start = time.perf_counter()
    bare_loop((path, level, side, coords, None))
    times["bare"].append(time.perf_counter() - start)
    # The same loop split over `workers` processes: how far this machine's cores scale at all.
    times["bare_parallel"].append(parallel_loops(path, level, side, coords, workers, None))
    # The project on one worker: its cost per tile on one core, whatever the machine's scaling.
    times["serial"].append(project_tiling(folder, tmp / f"serial{repeat}", replace(cfg, workers=1))[2])
    times["same_work"].append(parallel_loops(path, level, side, coords, workers, (tmp / f"same{repeat}", cfg)))
    return plan, (level, side)


def report(n: int, geometry, median: dict, times: dict, args) -> None:
    level, side = geometry
    ratios = [b / p / args.workers for p, b in zip(times["project"], times["bare"])]
    same_work = n / median["same_work"]
    print(f"tiles: {n} of {args.tile_size}px at {args.target_mpp} um/px (read level {level}, {side}px regions)")
    print(f"medians of {args.repeats} alternating runs:")
    print(f"bare read_region loop, 1 process : {n / median['bare']:8.1f} tiles/s")
    print(
        f"bare read_region loop, {args.workers} processes: {n / median['bare_parallel']:8.1f} tiles/s"
        f"  (x{median['bare'] / median['bare_parallel']:.2f} of 1 process)"
    )
    print(
        f"project tiling, {args.workers} workers      : {n / median['project']:8.1f} tiles/s"
        f"  (planning {median['plan']:.2f} s of {median['project']:.2f} s)"
    )
    print(
        f"project tiling, 1 worker       : {n / median['serial']:8.1f} tiles/s"
        f"  ({median['bare'] / median['serial']:.2f} of the bare loop on 1 process)"
    )
    print(
        f"ratio per worker (target >= 0.7)  : {statistics.median(ratios):8.2f}  (runs: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")"
    )
    print(f"project / bare loop on {args.workers} processes : {median['bare_parallel'] / median['project']:8.2f}")
    print(
        f"bare loop + resample, encode, write, {args.workers} processes: {same_work:8.1f} tiles/s  (per process "
        f"{same_work / args.workers / (n / median['bare']):.2f} of the bare loop: the ceiling for this per-tile "
        "work here)"
    )
    print(f"project / that loop             : {median['same_work'] / median['project']:8.2f}")


def project_tiling(folder: Path, output: Path, cfg):
    """Stage 1 on the slide folder: (plan, seconds planning, seconds in all)."""
    start = time.perf_counter()
    plan = plan_slides(folder, cfg, None).assign(partition="ssrl", source="slides")
    planning = time.perf_counter() - start
    write_tiles(plan, output, cfg)
    return plan, planning, time.perf_counter() - start


def in_job_order(plan) -> list[tuple[int, int]]:
    """The tiles' (x, y) in the order the project's workers read them: squares of neighbours, one after another.

    The bare loop reads in this order too, so neither side gains from OpenSlide's tile cache (32 MB by default)
    where the other loses: row by row across a wide slide, a 309 px row of reads spans more slide tiles than the
    cache holds, and the bare loop ran 7 % slower on a 2,908-tile slide.
    """
    return [(x, y) for _, job in plan.groupby(job_keys(plan), sort=False) for x, y in zip(job["x"], job["y"])]


def parallel_loops(path, level: int, side: int, coords, workers: int, write) -> float:
    """Seconds for bare_loop over `workers` processes, each on a contiguous share of the tiles.

    Contiguous shares keep the slide tiles a process decodes in its own OpenSlide cache; interleaved shares made
    both processes decode nearly every slide tile (x1.5 instead of x1.75-2.0). The processes start as the
    project's workers do (one torch thread each).
    """
    shares = [(path, level, side, share.tolist(), write) for share in np.array_split(coords, workers)]
    with ProcessPoolExecutor(workers, initializer=start_worker) as pool:
        start = time.perf_counter()
        list(pool.map(bare_loop, shares))
        return time.perf_counter() - start


def bare_loop(job) -> None:
    """read_region over the tiles; with write = (folder, cfg), also the work every tile needs after its read."""
    path, level, side, coords, write = job
    slide = open_slide(path)
    if write is None:
        for x, y in coords:
            slide.read_region((int(x), int(y)), level, (side, side))
        return
    folder, cfg = write
    folder.mkdir(exist_ok=True)
    for x, y in coords:
        tile = resample_region(slide.read_region((int(x), int(y)), level, (side, side)), cfg.tile_size)
        tile.save(folder / f"{x}_{y}.jpg", quality=cfg.jpeg_quality)


if __name__ == "__main__":
    main()
