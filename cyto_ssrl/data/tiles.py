"""Stage 1: slides (or cell crops) in, labelled tiles and a Parquet manifest out.

plan (worker processes over slides: mpp, deposit grid, labels) -> split by patient -> balance (partitions drawn 1:1)
-> cut (worker processes over tile batches) -> manifest. Tiles are written into a staging folder and the manifest
under a temporary name; both move into place only when every tile is written, so a failed run leaves the previous
output as it was. A slide that gives no tile (unreadable, or too little deposit) is skipped with a warning: one
blank slide in a lab's folder does not stop the run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import torch
from tqdm import tqdm

from cyto_ssrl.config import TileConfig
from cyto_ssrl.data import annotations as ann
from cyto_ssrl.data.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, Geometry, open_slide, read_tiles, slide_mpp, tile_grid
from cyto_ssrl.data.split import assign_partitions, balance_partitions, check_balance, check_classes
from cyto_ssrl.errors import CytoError
from cyto_ssrl.progress import progress_bar

MANIFEST_COLUMNS = [
    "tile_id", "slide_id", "patient_id", "partition", "x", "y", "extent", "level", "source_mpp", "target_mpp",
    "tile_size", "label", "slide_label", "deposit_fraction", "source", "source_path", "path",
]  # fmt: skip
JOB_TILES = 6  # a worker job is a square of up to this many tiles a side
CELL_CHUNK = 64  # cell crops per worker job
SKIPPED_COLUMNS = ["slide_id", "path", "reason"]


class SlideSkipped(CytoError):
    """A slide that gives no tile (unreadable, or no tile passes the deposit check): the run goes on without it."""


def make_tiles(source: str, input_dir: str | Path | None, output_dir: str | Path, cfg: TileConfig,
               annotations: str | Path | None = None) -> pd.DataFrame:  # fmt: skip
    """Run stage 1 and return the manifest (also written to output_dir/manifest.parquet).

    What the run left out rides along in the returned manifest's attrs (not in the file): `skipped_slides`, one
    record (SKIPPED_COLUMNS) per slide that gave no tile, and `balance`, tiles planned/kept/dropped per partition.
    """
    output_dir = Path(output_dir).resolve()
    check_balance(cfg.balance)
    if source == "synthetic":
        from cyto_ssrl.data.synthetic import generate_cohort

        input_dir = output_dir / "slides"
        generate_cohort(input_dir, cfg.synthetic, cfg.workers)
    if source in ("slides", "synthetic"):
        plan = plan_slides(_existing_dir(input_dir), cfg, annotations)
    elif source == "cells":
        from cyto_ssrl.data.cells import plan_cells

        plan = plan_cells(_existing_dir(input_dir), cfg)
    else:
        raise CytoError(f"unknown tile source {source!r}; choose slides, cells or synthetic")
    skipped = plan.attrs.pop("skipped_slides", [])  # popped: pandas would carry it into the manifest file
    plan["source"] = source
    plan = split_plan(plan, cfg)
    # Balanced partitions are drawn before any tile is cut: a tile they drop is never read or written.
    kept = balance_partitions(plan, cfg.balance, cfg.seed)
    manifest = write_tiles(kept, output_dir, cfg)
    manifest.attrs.update(skipped_slides=skipped, balance=balance_report(plan, kept, cfg.balance))
    return manifest


def _existing_dir(path) -> Path:
    if path is None or not Path(path).is_dir():
        raise CytoError(f"input folder {path} does not exist")
    return Path(path)


def split_plan(plan: pd.DataFrame, cfg: TileConfig) -> pd.DataFrame:
    """Give every tile its patient's partition; patients are split before any tile is cut."""
    groups = plan.groupby("patient_id").agg(label=("label", _group_label), weight=("tile_id", "size"))
    partition = assign_partitions(groups.reset_index(names="group"), cfg.partitions, cfg.seed)
    plan = plan.assign(partition=plan["patient_id"].map(partition))
    check_classes(plan, cfg.partitions)
    return plan


def balance_report(planned: pd.DataFrame, kept: pd.DataFrame, balanced) -> list[dict]:
    """Per partition: balanced or not, tiles planned, kept and dropped (and the dropped ones by label)."""
    rows = []
    for name, tiles in planned.groupby("partition", sort=True):
        dropped = tiles.loc[~tiles.index.isin(kept.index), "label"].value_counts()
        rows.append({"partition": name, "balanced_1to1": name in balanced, "planned": len(tiles),
                     "kept": len(tiles) - int(dropped.sum()), "dropped": int(dropped.sum()),
                     "dropped_labels": ", ".join(f"{label} {n}" for label, n in dropped.items())})  # fmt: skip
    return rows


def _group_label(tile_labels: pd.Series) -> str:
    """A patient counts as positive for the split when any of its planned tiles is: those are the scarce ones."""
    for label in ("positive", "negative"):
        if (tile_labels == label).any():
            return label
    return "unknown"


# ---------------------------------------------------------------------------------------------------- slides


def discover_slides(input_dir: Path) -> dict[str, Path]:
    """Slide id (file stem) -> path for every slide or image file below input_dir."""
    found: dict[str, Path] = {}
    for path in sorted(input_dir.rglob("*")):
        if path.suffix.lower() not in SLIDE_SUFFIXES | IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            raise CytoError(f"duplicate slide id {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    if not found:
        raise CytoError(f"no slides or images in {input_dir}")
    return found


def plan_slides(input_dir: Path, cfg: TileConfig, annotations: str | Path | None) -> pd.DataFrame:
    """Every slide's planned tiles. A slide that gives none is left out with a one-line warning and listed in the
    plan's attrs['skipped_slides']; with cfg.strict the first such slide's reason is the run's error."""
    slides = discover_slides(input_dir)
    table = _slide_table(input_dir)
    csv_cells = ann.read_csv_points(Path(annotations), cfg.csv) if _is_csv(annotations) else None
    jobs = [(slide_id, path, table.get(slide_id, {}), _cells_source(path, annotations, csv_cells, cfg), cfg)
            for slide_id, path in slides.items()]  # fmt: skip
    # Slides are planned side by side: each reads a pyramid level for its deposit check and parses its annotations.
    plans, skipped = [], []
    results = _map(_plan_job, jobs, cfg.workers)
    # closing: a strict stop cancels the slides still queued
    with contextlib.closing(results), progress_bar(total=len(jobs), desc="planning slides", unit="slide") as bar:
        for slide_id, (plan, reason) in zip(slides, results):
            bar.update()
            if reason is None:
                plans.append(plan)
            elif cfg.strict:
                raise CytoError(f"slide {slide_id!r}: {reason}")
            else:
                tqdm.write(f"skipping slide {slide_id!r}: {reason}", file=sys.stderr)
                skipped.append(dict(zip(SKIPPED_COLUMNS, (slide_id, str(slides[slide_id]), reason))))
    if not plans:
        raise CytoError(f"no slide in {input_dir} gives a tile ({len(skipped)} skipped); the first, "
                        f"{skipped[0]['slide_id']!r}: {skipped[0]['reason']}")  # fmt: skip
    plan = pd.concat(plans, ignore_index=True)
    plan.attrs["skipped_slides"] = skipped
    return plan


def _plan_job(job) -> tuple[pd.DataFrame | None, str | None]:
    """(the slide's plan, None), or (None, why it gives no tile). Any other error is the run's: missing um/px or
    annotations that are broken or do not fit the slide must be fixed, not skipped."""
    slide_id, path, meta, cells, cfg = job
    if isinstance(cells, Path):
        cells = ann.read_geojson(cells, cfg.cell_classes), None
    try:
        return plan_slide(slide_id, path, meta, cells, cfg), None
    except SlideSkipped as skip:
        return None, str(skip)


def _is_csv(path) -> bool:
    return path is not None and Path(path).suffix.lower() == ".csv"


def _slide_table(input_dir: Path) -> dict[str, dict]:
    """Optional slides.csv beside the slides: slide_id with patient_id, label and/or mpp per slide."""
    path = input_dir / "slides.csv"
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype={"slide_id": str})
    return {row["slide_id"]: {k: v for k, v in row.items() if pd.notna(v)} for row in table.to_dict("records")}


def _cells_source(path: Path, annotations, csv_cells: dict | None, cfg: TileConfig) -> tuple | Path | None:
    """The slide's cells with the image size their coordinates refer to (None: level-0 pixels), or the GeoJSON
    file that holds them (parsed by the slide's planning job), or None."""
    if csv_cells is not None:
        cells = csv_cells.get(path.name)
        return None if cells is None else (cells, cfg.csv.image_size)
    folder = Path(annotations) if annotations is not None else path.parent
    for suffix in (".geojson", ".json"):
        candidate = folder / (path.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def plan_slide(slide_id: str, path: Path, meta: dict, cells, cfg: TileConfig) -> pd.DataFrame:
    """Every tile of one slide that passes the deposit check, with its label; nothing is read at full size.

    SlideSkipped when the slide cannot be read or no tile passes; its annotations are checked first, so an error in
    them is never hidden by a skip.
    """
    try:
        slide = open_slide(path)
    except CytoError as exc:
        raise SlideSkipped(_one_line(exc)) from None
    mpp = slide_mpp(slide, slide_id, cfg.slide_mpp.get(slide_id, meta.get("mpp")), cfg.default_mpp)
    geometry = Geometry(mpp, cfg.target_mpp, cfg.tile_size)
    if cells is not None:
        cells = ann.rescale(cells[0], cells[1], slide.dimensions)
        ann.check_inside(cells, slide.dimensions, f"annotations of slide {slide_id!r}")
    try:
        coords, fraction = tile_grid(slide, geometry, cfg.min_deposit)
    except (openslide.OpenSlideError, OSError, SyntaxError) as exc:
        # A truncated or corrupt file opens, then fails to read (Pillow reports some broken PNGs as SyntaxError).
        raise SlideSkipped(f"{path} cannot be read ({_one_line(exc)})") from None
    if len(coords) == 0:
        raise SlideSkipped(f"no tile of {geometry.extent:.0f} level-0 px has {cfg.min_deposit:.0%} cell deposit; "
                           "lower min_deposit or check the slide")  # fmt: skip
    if cfg.max_tiles_per_slide and len(coords) > cfg.max_tiles_per_slide:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(coords), cfg.max_tiles_per_slide, replace=False))
        coords, fraction = coords[keep], fraction[keep]
    slide_label = meta.get("label") or _slide_label(cells)
    labels = label_tiles(coords, geometry.extent, cells, slide_label, cfg.positive_cell_fraction)
    return pd.DataFrame({
        "tile_id": [f"{slide_id}_x{x}_y{y}" for x, y in coords],
        "slide_id": slide_id, "patient_id": str(meta.get("patient_id", slide_id)),
        "x": coords[:, 0], "y": coords[:, 1], "extent": geometry.extent, "level": geometry.read_level(slide),
        "source_mpp": mpp, "target_mpp": cfg.target_mpp, "tile_size": cfg.tile_size,
        "label": labels, "slide_label": slide_label, "deposit_fraction": fraction, "source_path": str(path),
    })  # fmt: skip


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _slide_label(cells: pd.DataFrame | None) -> str:
    if cells is None:
        return "unknown"
    return "positive" if (cells["label"] == "positive").any() else "negative"


def label_tiles(coords: np.ndarray, extent: float, cells: pd.DataFrame | None, slide_label: str,
                min_fraction: float) -> list[str]:  # fmt: skip
    """Tile labels from positive cells: positive, negative, or ambiguous when a positive cell is only partly in.

    min_fraction 0 uses the centre rule (a positive cell's centre inside); above 0, that part of the cell's
    polygon must lie inside. Tiles of negative slides are negative; slides without annotations stay unknown.
    """
    if slide_label != "positive" or cells is None:
        return [slide_label] * len(coords)
    positive = cells[cells["label"] == "positive"]
    samples = [_polygon_samples(row) for row in positive.itertuples()]
    # Every positive cell's samples in one array, each tagged with its cell: one test per tile, not per tile and cell.
    per_cell = np.array([len(s) for s in samples], dtype=int)
    points, owner = np.concatenate([np.zeros((0, 2)), *samples]), np.repeat(np.arange(len(samples)), per_cell)
    centres = positive[["x", "y"]].to_numpy()
    labels = []
    for x, y in coords:
        fractions = np.bincount(owner[_inside(points, x, y, extent)], minlength=len(samples)) / per_cell
        decided = _inside(centres, x, y, extent) if min_fraction <= 0 else fractions >= min_fraction
        labels.append("positive" if decided.any() else "ambiguous" if (fractions > 0).any() else "negative")
    return labels


def _inside(points: np.ndarray, x: float, y: float, extent: float) -> np.ndarray:
    return (points[:, 0] >= x) & (points[:, 0] < x + extent) & (points[:, 1] >= y) & (points[:, 1] < y + extent)


@functools.lru_cache(maxsize=None)
def _grid(n: int = 12) -> np.ndarray:
    u = (np.arange(n) + 0.5) / n
    return np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2)


def _polygon_samples(cell) -> np.ndarray:
    """Points spread evenly over a cell's polygon, so 'fraction inside a tile' is a count; a point cell is one."""
    if cell.polygon is None:
        return np.array([[cell.x, cell.y]])
    from matplotlib.path import Path as PolygonPath

    low, high = cell.polygon.min(axis=0), cell.polygon.max(axis=0)
    points = low + _grid() * (high - low)
    inside = points[PolygonPath(cell.polygon).contains_points(points)]
    return inside if len(inside) else np.array([[cell.x, cell.y]])


# ---------------------------------------------------------------------------------------------------- cutting


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
    write_parquet_atomic(manifest, output_dir / "manifest.parquet")
    return manifest


def _cut_all(plan: pd.DataFrame, staging: Path, cfg: TileConfig) -> None:
    for slide_id in plan["slide_id"].unique():
        os.makedirs(staging / slide_id, exist_ok=True)
    # Workers get only what they read, not the whole manifest row.
    rows = plan[["source", "source_path", "source_mpp", "level", "x", "y", "target"]]
    jobs = [(job, cfg) for _, job in rows.groupby(_job_keys(plan), sort=False)]
    with progress_bar(total=len(plan), desc="cutting tiles", unit="tile") as bar:
        for done in _map(_cut_job, jobs, cfg.workers):
            bar.update(done)


def _job_keys(plan: pd.DataFrame) -> list:
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
        slide = _open_cached(first["source_path"])
        images = read_tiles(slide, geometry, int(first["level"]), rows[["x", "y"]].to_numpy())
    for image, target in zip(images, rows["target"]):
        if cfg.image_format == "jpg":
            image.save(target, quality=cfg.jpeg_quality)
        else:
            image.save(target)
    return len(rows)


def _map(fn, jobs: list, workers: int):
    """fn over jobs in order, in up to `workers` processes (no pool for a single job or worker)."""
    if min(workers, len(jobs)) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), initializer=_start_worker) as pool:
        try:
            yield from pool.map(fn, jobs)
        finally:
            pool.shutdown(cancel_futures=True)  # a failed job reports at once, not after every queued job has run


def _start_worker() -> None:
    # A forked worker inherits the slides its parent opened for an in-process run; their file offsets would be
    # shared with the parent and every sibling, so each worker opens its own.
    _open_cached.cache_clear()
    torch.set_num_threads(1)  # the resampling kernel's: the workers already fill the cores


@functools.lru_cache(maxsize=4)
def _open_cached(path: str):
    return open_slide(path)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write under a temporary name and rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tiles per partition x label, and per slide."""
    by_partition = pd.crosstab(manifest["partition"], manifest["label"], margins=True, margins_name="total")
    per_slide = manifest.pivot_table(index=["slide_id", "patient_id", "partition", "slide_label"], columns="label",
                                     values="tile_id", aggfunc="count", fill_value=0)  # fmt: skip
    return by_partition.reset_index(), per_slide.reset_index()
