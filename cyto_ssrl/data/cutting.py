"""Cutting planned tiles: worker processes read each tile at the target um/px and write it into a staging folder,
which moves into place with the manifest only when every tile is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cyto_ssrl.data.config import TileConfig
from cyto_ssrl.data.parallel import open_cached, parallel_map
from cyto_ssrl.data.slides import Geometry, read_tiles
from cyto_ssrl.files import write_parquet
from cyto_ssrl.progress import progress_bar

MANIFEST_COLUMNS = [
    "tile_id",
    "slide_id",
    "patient_id",
    "partition",
    "x",
    "y",
    "extent",
    "level",
    "source_mpp",
    "target_mpp",
    "tile_size",
    "label",
    "slide_label",
    "deposit_fraction",
    "source",
    "path",  # the tile's; the slide's own path stays out: its file name may name the patient
]
JOB_TILES = 6  # a worker job is a square of up to this many tiles a side
CELL_CHUNK = 64  # cell crops per worker job


def write_tiles(plan: pd.DataFrame, output_dir: Path, cfg: TileConfig) -> pd.DataFrame:
    """Cut every planned tile in worker processes, then move tiles and manifest into place together."""
    final, staging = output_dir / "tiles", output_dir / ".tiles.partial"
    shutil.rmtree(staging, ignore_errors=True)
    names = [f"{s}/{t}.{cfg.image_format}" for s, t in zip(plan["slide_id"], plan["tile_id"])]
    plan = plan.assign(path=[f"{final}/{n}" for n in names])
    try:
        _cut_all(plan.assign(target=[f"{staging}/{n}" for n in names]), staging, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = plan[MANIFEST_COLUMNS].sort_values(["partition", "slide_id", "tile_id"], ignore_index=True)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    write_parquet(manifest, output_dir / "manifest.parquet")
    return manifest


def _cut_all(plan: pd.DataFrame, staging: Path, cfg: TileConfig) -> None:
    for slide_id in plan["slide_id"].unique():
        os.makedirs(staging / slide_id, exist_ok=True)
    # Workers get only what they read, not the whole manifest row.
    rows = plan[["source", "source_path", "source_mpp", "level", "x", "y", "target"]]
    jobs = [(job, cfg) for _, job in rows.groupby(job_keys(plan), sort=False)]
    with progress_bar(total=len(plan), desc="cutting tiles", unit="tile") as bar:
        for done in parallel_map(_cut_job, jobs, cfg.workers):
            bar.update(done)


def job_keys(plan: pd.DataFrame) -> list:
    """One job per square of up to JOB_TILES x JOB_TILES neighbouring tiles of a slide; cell crops in fixed chunks.

    Neighbours share slide tiles, which then stay in the worker's OpenSlide cache from one read to the next.
    """
    if plan["source"].iloc[0] == "cells":
        return [np.arange(len(plan)) // CELL_CHUNK]
    column, row = (np.round(plan[axis] / plan["extent"]) // JOB_TILES for axis in ("x", "y"))
    return [plan["source_path"], column, row]


def _cut_job(job) -> int:
    rows, cfg = job
    if rows["source"].iloc[0] == "cells":
        from cyto_ssrl.data.cells import crop_tile

        images = (crop_tile(path, cfg) for path in rows["source_path"])
    else:
        first = rows.iloc[0]
        geometry = Geometry(first["source_mpp"], cfg.target_mpp, cfg.tile_size)
        slide = open_cached(first["source_path"])
        images = read_tiles(slide, geometry, int(first["level"]), rows[["x", "y"]].to_numpy())
    for image, target in zip(images, rows["target"]):
        if cfg.image_format == "jpg":
            image.save(target, quality=cfg.jpeg_quality)
        else:
            image.save(target)
    return len(rows)
