"""Cutting planned tiles: worker processes read each tile at the target um/px and write it into a new version folder,
which replaces the previous tiles and manifest as a pair, in one rename, only when every tile is written.

Layout of an output folder: `.tiles-<id>/` holds one tiling (`tiles/` and `manifest.parquet`); `current` is a link
to the newest one; `tiles` and `manifest.parquet` are fixed links through `current`. Renaming a new `current` into
place is the one step that switches both, so a reader sees the old pair or the new pair, never a mix.
"""

from __future__ import annotations

import os
import shutil
import uuid
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
    """Cut every planned tile in worker processes into a new version folder, then switch tiles and manifest to it
    together. A failed run (a full disk, a bad slide) removes its folder and leaves the previous pair as it was."""
    final, version = output_dir / "tiles", output_dir / f".tiles-{uuid.uuid4().hex[:12]}"
    names = [f"{s}/{t}.{cfg.image_format}" for s, t in zip(plan["slide_id"], plan["tile_id"])]
    plan = plan.assign(path=[f"{final}/{n}" for n in names])  # read through the links: the same after a re-tiling
    manifest = plan[MANIFEST_COLUMNS].sort_values(["partition", "slide_id", "tile_id"], ignore_index=True)
    try:
        _cut_all(plan.assign(target=[f"{version}/tiles/{n}" for n in names]), version / "tiles", cfg)
        write_parquet(manifest, version / "manifest.parquet")
    except BaseException:
        shutil.rmtree(version, ignore_errors=True)
        raise
    switch_version(output_dir, version)  # outside the try: once `current` names it, the version must stay
    return manifest


def switch_version(output_dir: Path, version: Path) -> None:
    """Point `current` at `version` in one rename, make `tiles` and `manifest.parquet` links through it (once), and
    remove every other version (the previous one, and any a killed run left)."""
    link = output_dir / f".current-{version.name}"
    link.symlink_to(version.name)
    os.replace(link, output_dir / "current")
    for name in ("tiles", "manifest.parquet"):
        fixed = output_dir / name
        if not fixed.is_symlink():  # the first tiling here, or an output written before versions
            _remove(fixed)
            fixed.symlink_to(Path("current") / name)
    for old in output_dir.glob(".tiles-*"):
        if old != version:
            shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _cut_all(plan: pd.DataFrame, folder: Path, cfg: TileConfig) -> None:
    for slide_id in plan["slide_id"].unique():
        os.makedirs(folder / slide_id, exist_ok=True)
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
