"""Cell-crop folders as a tile source: SIPaKMeD (`im_<Class>/CROPPED/*.bmp`) and Herlev (`<class>/*.BMP`).

Each crop becomes one tile, padded to the tile size around the cell (never stretched). Crops of one source
image form a group that goes to one partition: SIPaKMeD numbers its cluster images per class folder (`NNN_KK`
is cell KK of cluster NNN), Herlev names carry the source image (`<image ids>-NNN`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cyto_ssrl.data.annotations import class_to_label
from cyto_ssrl.data.config import TileConfig
from cyto_ssrl.data.slides import IMAGE_SUFFIXES
from cyto_ssrl.errors import CytoError

_CELL_NUMBER = re.compile(r"^(.*?)[-_]\d+$")


def plan_cells(input_dir: Path, cfg: TileConfig) -> pd.DataFrame:
    rows = []
    for path in sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        folder = _class_folder(path)
        label = class_to_label(folder.name, cfg.cell_classes, f"class folder {folder}")
        if label is not None:
            rows.append(_cell_row(path, folder, label, cfg))
    if not rows:
        raise CytoError(f"no cell images of a labelled class in {input_dir} (expected im_<Class>/CROPPED/ or <class>/)")
    return pd.DataFrame(rows)


def _class_folder(path: Path) -> Path:
    folder = path.parent
    return folder.parent if folder.name.lower() == "cropped" else folder


def _cell_row(path: Path, folder: Path, label: str, cfg: TileConfig) -> dict:
    match = _CELL_NUMBER.match(path.stem)
    source_image = match.group(1) if match else path.stem
    if folder.name.lower().startswith("im_"):
        source_image = f"{folder.name}/{source_image}"
    return {
        "tile_id": f"{folder.name}_{path.stem}",
        "slide_id": source_image,
        "patient_id": source_image,
        "x": 0,
        "y": 0,
        "extent": np.nan,
        "level": 0,
        "source_mpp": cfg.default_mpp or np.nan,
        "target_mpp": cfg.target_mpp,
        "tile_size": cfg.tile_size,
        "label": label,
        "slide_label": label,
        "deposit_fraction": 1.0,
        "source_path": str(path),
    }


def crop_tile(path: str, cfg: TileConfig) -> Image.Image:
    """The crop at the target um/px (when its um/px is known), shrunk only if too large, centred on padding."""
    image = Image.open(path).convert("RGB")
    if cfg.default_mpp:
        scale = cfg.default_mpp / cfg.target_mpp
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    if max(image.size) > cfg.tile_size:
        image.thumbnail((cfg.tile_size, cfg.tile_size), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (cfg.tile_size, cfg.tile_size), _border_colour(image))
    tile.paste(image, ((cfg.tile_size - image.width) // 2, (cfg.tile_size - image.height) // 2))
    return tile


def _border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median colour of the crop's edge: the smear's own background, so padding does not look like a cell."""
    pixels = np.asarray(image)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))
