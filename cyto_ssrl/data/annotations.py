"""Cell annotations: QuPath GeoJSON exports or a CSV of cell points, as one table per slide.

A cell table has one row per cell: x, y (centre, level-0 pixels), label ("positive"/"negative") and, for
polygons, `polygon` (an (n, 2) array of level-0 vertices). Labels are mapped with the same class table as cell
folders, so a QuPath class named like a Herlev or SIPaKMeD folder works too.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cyto_ssrl.data.config import CsvAnnotationConfig
from cyto_ssrl.errors import CytoError

LABELS = ("positive", "negative")


def class_to_label(name: str, classes: dict[str, str | None], where: str) -> str | None:
    """'positive'/'negative' for a known class, None for a class deliberately left out."""
    key = name.strip().lower().removeprefix("im_")
    if key in LABELS:
        return key
    if key in classes:
        return classes[key]
    raise CytoError(f"{where}: unknown cell class {name!r}; known: positive, negative, {', '.join(sorted(classes))}")


def read_geojson(path: Path, classes: dict[str, str | None]) -> pd.DataFrame:
    """Cells of a QuPath GeoJSON export (FeatureCollection or a bare list of Features)."""
    with _collector_paused():
        return _read_geojson(path, classes)


@contextlib.contextmanager
def _collector_paused():
    """A slide's export parses into ~10^5 objects, enough to set off full garbage collections, each of which walks
    every object the process holds (torch, mlflow: 0.1-0.2 s a time, most of a slide's planning). Parsed JSON
    holds no reference cycles, so those collections would free nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_geojson(path: Path, classes: dict[str, str | None]) -> pd.DataFrame:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CytoError(f"annotation file {path} is not valid GeoJSON ({exc})") from None
    features = data.get("features", []) if isinstance(data, dict) else data
    rows = []
    for i, feature in enumerate(features):
        props = feature.get("properties") or {}
        name = (props.get("classification") or {}).get("name")
        if name is None:
            raise CytoError(f"{path}: feature {i} has no properties.classification.name")
        label = class_to_label(name, classes, str(path))
        if label is None:
            continue
        row = _geometry_row(feature.get("geometry") or {}, label, f"{path}: feature {i}")
        # QuPath cell detections carry the nucleus centre, a better cell centre than the outline's mean.
        measurements = props.get("measurements") or {}
        if "Nucleus: Centroid X px" in measurements:
            row["x"], row["y"] = measurements["Nucleus: Centroid X px"], measurements["Nucleus: Centroid Y px"]
        rows.append(row)
    return pd.DataFrame(rows, columns=["x", "y", "label", "polygon"])


def _geometry_row(geometry: dict, label: str, where: str) -> dict:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Point":
        return {"x": float(coords[0]), "y": float(coords[1]), "label": label, "polygon": None}
    if kind == "Polygon":
        ring = np.asarray(coords[0], dtype=float)
        centre = ring[:-1].mean(axis=0) if len(ring) > 1 else ring[0]
        return {"x": centre[0], "y": centre[1], "label": label, "polygon": ring}
    raise CytoError(f"{where}: geometry {kind!r} is not supported (Point or Polygon)")


def read_csv_points(path: Path, cfg: CsvAnnotationConfig) -> dict[str, pd.DataFrame]:
    """Cells per image file name from a CSV such as CRIC's classifications.csv.

    Rows whose label is one of `cfg.negative_classes` are negative, every other class positive (CRIC: NILM vs
    ASC-US/LSIL/ASC-H/HSIL/SCC). Coordinates stay in the CSV's pixel space; `rescale` maps them to the slide.
    """
    table = pd.read_csv(path)
    needed = [cfg.image_column, cfg.x_column, cfg.y_column, cfg.label_column]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise CytoError(f"annotation CSV {path} lacks column(s) {missing}; it has {list(table.columns)}")
    cells = pd.DataFrame(
        {
            "image": table[cfg.image_column].astype(str),
            "x": table[cfg.x_column].astype(float),
            "y": table[cfg.y_column].astype(float),
            "label": np.where(table[cfg.label_column].isin(cfg.negative_classes), "negative", "positive"),
            "polygon": None,
        }
    )
    return {image: group.drop(columns="image").reset_index(drop=True) for image, group in cells.groupby("image")}


def rescale(cells: pd.DataFrame, from_size: tuple[int, int] | None, to_size: tuple[int, int]) -> pd.DataFrame:
    """Coordinates given in another image size (CRIC: 1376x1020) moved to the slide's level-0 size."""
    if from_size is None or tuple(from_size) == tuple(to_size):
        return cells
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    cells = cells.copy()
    cells["x"] *= sx
    cells["y"] *= sy
    cells["polygon"] = [None if p is None else p * (sx, sy) for p in cells["polygon"]]
    return cells


def check_inside(cells: pd.DataFrame, size: tuple[int, int], where: str) -> None:
    """Refuse annotations that do not fit the slide: they belong to another image or another scale."""
    outside = (cells["x"] < 0) | (cells["y"] < 0) | (cells["x"] >= size[0]) | (cells["y"] >= size[1])
    if outside.any():
        row = cells[outside].iloc[0]
        raise CytoError(
            f"{where}: {int(outside.sum())} cell(s) lie outside the slide ({size[0]}x{size[1]} px), "
            f"first at ({row.x:.0f}, {row.y:.0f})"
        )
