"""Stage 1: slides (or cell crops) in, labelled tiles and a Parquet manifest out.

plan (main process: discover slides, mpp, deposit grid, labels) -> split by patient -> cut (worker processes over
tile batches) -> manifest. Tiles are written into a staging folder and the manifest under a temporary name; both
move into place only when every tile is written, so a failed run leaves the previous output as it was.
"""

from __future__ import annotations

import functools
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cyto_ssrl.config import TileConfig
from cyto_ssrl.data import annotations as ann
from cyto_ssrl.data.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, Geometry, open_slide, read_tiles, slide_mpp, tile_grid
from cyto_ssrl.data.split import assign_partitions, check_classes
from cyto_ssrl.errors import CytoError

MANIFEST_COLUMNS = [
    "tile_id", "slide_id", "patient_id", "partition", "x", "y", "extent", "level", "source_mpp", "target_mpp",
    "tile_size", "label", "slide_label", "deposit_fraction", "source", "source_path", "path",
]  # fmt: skip
BLOCK_PX = 2048  # neighbouring tiles are read as one region up to this many pixels a side
CELL_CHUNK = 64  # cell crops per worker job


def make_tiles(source: str, input_dir: str | Path | None, output_dir: str | Path, cfg: TileConfig,
               annotations: str | Path | None = None) -> pd.DataFrame:  # fmt: skip
    """Run stage 1 and return the manifest (also written to output_dir/manifest.parquet)."""
    output_dir = Path(output_dir).resolve()
    if source == "synthetic":
        from cyto_ssrl.data.synthetic import generate_cohort

        input_dir = output_dir / "slides"
        generate_cohort(input_dir, cfg.synthetic)
    if source in ("slides", "synthetic"):
        plan = plan_slides(_existing_dir(input_dir), cfg, annotations)
    elif source == "cells":
        from cyto_ssrl.data.cells import plan_cells

        plan = plan_cells(_existing_dir(input_dir), cfg)
    else:
        raise CytoError(f"unknown tile source {source!r}; choose slides, cells or synthetic")
    plan["source"] = source
    plan = split_plan(plan, cfg)
    return write_tiles(plan, output_dir, cfg)


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
    slides = discover_slides(input_dir)
    table = _slide_table(input_dir)
    csv_cells = ann.read_csv_points(Path(annotations), cfg.csv) if _is_csv(annotations) else None
    plans = []
    for slide_id, path in tqdm(slides.items(), desc="planning slides", unit="slide"):
        meta = table.get(slide_id, {})
        cells = _slide_cells(path, annotations, csv_cells, cfg)
        plans.append(plan_slide(slide_id, path, meta, cells, cfg))
    return pd.concat(plans, ignore_index=True)


def _is_csv(path) -> bool:
    return path is not None and Path(path).suffix.lower() == ".csv"


def _slide_table(input_dir: Path) -> dict[str, dict]:
    """Optional slides.csv beside the slides: slide_id with patient_id, label and/or mpp per slide."""
    path = input_dir / "slides.csv"
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype={"slide_id": str})
    return {row["slide_id"]: {k: v for k, v in row.items() if pd.notna(v)} for row in table.to_dict("records")}


def _slide_cells(path: Path, annotations, csv_cells: dict | None, cfg: TileConfig) -> tuple[pd.DataFrame, tuple] | None:
    """The slide's cells and the image size their coordinates refer to (None: level-0 pixels)."""
    if csv_cells is not None:
        cells = csv_cells.get(path.name)
        return None if cells is None else (cells, cfg.csv.image_size)
    folder = Path(annotations) if annotations is not None else path.parent
    for suffix in (".geojson", ".json"):
        candidate = folder / (path.stem + suffix)
        if candidate.exists():
            return ann.read_geojson(candidate, cfg.cell_classes), None
    return None


def plan_slide(slide_id: str, path: Path, meta: dict, cells, cfg: TileConfig) -> pd.DataFrame:
    """Every tile of one slide that passes the deposit check, with its label; nothing is read at full size."""
    slide = open_slide(path)
    mpp = slide_mpp(slide, slide_id, cfg.slide_mpp.get(slide_id, meta.get("mpp")), cfg.default_mpp)
    geometry = Geometry(mpp, cfg.target_mpp, cfg.tile_size)
    coords, fraction = tile_grid(slide, geometry, cfg.min_deposit)
    if len(coords) == 0:
        raise CytoError(f"slide {slide_id!r}: no tile of {geometry.extent:.0f} level-0 px has "
                        f"{cfg.min_deposit:.0%} cell deposit; lower min_deposit or check the slide")  # fmt: skip
    if cfg.max_tiles_per_slide and len(coords) > cfg.max_tiles_per_slide:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(coords), cfg.max_tiles_per_slide, replace=False))
        coords, fraction = coords[keep], fraction[keep]
    if cells is not None:
        cells = ann.rescale(cells[0], cells[1], slide.dimensions)
        ann.check_inside(cells, slide.dimensions, f"annotations of slide {slide_id!r}")
    slide_label = meta.get("label") or _slide_label(cells)
    labels = label_tiles(coords, geometry.extent, cells, slide_label, cfg.positive_cell_fraction)
    return pd.DataFrame({
        "tile_id": [f"{slide_id}_x{x}_y{y}" for x, y in coords],
        "slide_id": slide_id, "patient_id": str(meta.get("patient_id", slide_id)),
        "x": coords[:, 0], "y": coords[:, 1], "extent": geometry.extent, "level": geometry.read_level(slide),
        "source_mpp": mpp, "target_mpp": cfg.target_mpp, "tile_size": cfg.tile_size,
        "label": labels, "slide_label": slide_label, "deposit_fraction": fraction, "source_path": str(path),
    })  # fmt: skip


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
    centres = positive[["x", "y"]].to_numpy()
    labels = []
    for x, y in coords:
        fractions = np.array([_inside(s, x, y, extent).mean() for s in samples])
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
    plan = plan.assign(path=[str(final / s / f"{t}.{cfg.image_format}") for s, t in zip(plan.slide_id, plan.tile_id)])
    try:
        _cut_all(plan, final, staging, cfg)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = plan[MANIFEST_COLUMNS].sort_values(["partition", "slide_id", "tile_id"], ignore_index=True)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    write_parquet_atomic(manifest, output_dir / "manifest.parquet")
    return manifest


def _cut_all(plan: pd.DataFrame, final: Path, staging: Path, cfg: TileConfig) -> None:
    plan = plan.assign(target=[str(staging / Path(p).relative_to(final)) for p in plan["path"]])
    for folder in {str(Path(t).parent) for t in plan["target"]}:
        os.makedirs(folder, exist_ok=True)
    jobs = [(rows, cfg) for _, rows in plan.groupby(_job_keys(plan), sort=False)]
    with tqdm(total=len(plan), desc="cutting tiles", unit="tile") as bar:
        if cfg.workers <= 1:
            for job in jobs:
                bar.update(_cut_job(job))
            return
        with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            for done in pool.map(_cut_job, jobs):
                bar.update(done)


def _job_keys(plan: pd.DataFrame) -> pd.Series:
    """One job per block of neighbouring tiles of a slide (read as one region); cell crops in fixed chunks."""
    keys = []
    for n, row in enumerate(plan.itertuples()):
        if row.source == "cells":
            keys.append(("cells", n // CELL_CHUNK))
            continue
        side = row.extent / _open_cached(row.source_path).level_downsamples[row.level]
        block = max(1, int(BLOCK_PX // side))
        keys.append((row.source_path, round(row.x / row.extent) // block, round(row.y / row.extent) // block))
    return pd.Series(keys, index=plan.index)


def _cut_job(job) -> int:
    rows, cfg = job
    if rows["source"].iloc[0] == "cells":
        from cyto_ssrl.data.cells import crop_tile

        images = [crop_tile(path, cfg) for path in rows["source_path"]]
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
