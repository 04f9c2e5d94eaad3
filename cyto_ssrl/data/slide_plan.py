"""Planning slides: every tile of each slide that passes the deposit check, with its label, nothing read at full
size. Slides are planned side by side in worker processes; a slide that gives no tile (unreadable, or too little
deposit) is skipped with a warning, so one blank slide in a lab's folder does not stop the run.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
from tqdm import tqdm

import cyto_ssrl.data.annotations as ann
from cyto_ssrl.data.config import TileConfig
from cyto_ssrl.data.parallel import parallel_map
from cyto_ssrl.data.slides import IMAGE_SUFFIXES, SLIDE_SUFFIXES, Geometry, open_slide, slide_mpp, tile_grid
from cyto_ssrl.errors import CytoError
from cyto_ssrl.progress import progress_bar

SKIPPED_COLUMNS = ["slide_id", "path", "reason"]


class SlideSkipped(CytoError):
    """A slide that gives no tile (unreadable, or no tile passes the deposit check): the run goes on without it."""


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
    jobs = [
        (slide_id, path, table.get(slide_id, {}), _cells_source(path, annotations, csv_cells, cfg), cfg)
        for slide_id, path in slides.items()
    ]
    # Slides are planned side by side: each reads a pyramid level for its deposit check and parses its annotations.
    plans, skipped = [], []
    results = parallel_map(_plan_job, jobs, cfg.workers)
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
        raise CytoError(
            f"no slide in {input_dir} gives a tile ({len(skipped)} skipped); the first, "
            f"{skipped[0]['slide_id']!r}: {skipped[0]['reason']}"
        )
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
        raise SlideSkipped(
            f"no tile of {geometry.extent:.0f} level-0 px has {cfg.min_deposit:.0%} cell deposit; "
            "lower min_deposit or check the slide"
        )
    if cfg.max_tiles_per_slide and len(coords) > cfg.max_tiles_per_slide:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(coords), cfg.max_tiles_per_slide, replace=False))
        coords, fraction = coords[keep], fraction[keep]
    slide_label = meta.get("label") or _slide_label(cells)
    labels = label_tiles(coords, geometry.extent, cells, slide_label, cfg.positive_cell_fraction)
    return pd.DataFrame(
        {
            "tile_id": [f"{slide_id}_x{x}_y{y}" for x, y in coords],
            "slide_id": slide_id,
            "patient_id": str(meta.get("patient_id", slide_id)),
            "x": coords[:, 0],
            "y": coords[:, 1],
            "extent": geometry.extent,
            "level": geometry.read_level(slide),
            "source_mpp": mpp,
            "target_mpp": cfg.target_mpp,
            "tile_size": cfg.tile_size,
            "label": labels,
            "slide_label": slide_label,
            "deposit_fraction": fraction,
            "source_path": str(path),
        }
    )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _slide_label(cells: pd.DataFrame | None) -> str:
    if cells is None:
        return "unknown"
    return "positive" if (cells["label"] == "positive").any() else "negative"


def label_tiles(
    coords: np.ndarray, extent: float, cells: pd.DataFrame | None, slide_label: str, min_fraction: float
) -> list[str]:
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


@functools.cache
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
