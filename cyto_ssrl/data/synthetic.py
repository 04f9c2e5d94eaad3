"""A synthetic cervical-cytology cohort: pyramidal TIFF slides that OpenSlide opens, with QuPath GeoJSON cells.

Everything is laid out in micrometres and converted with each slide's mpp, so a cell has the same physical size
whichever scanner the slide imitates. Colours follow the Papanicolaou stain: eosinophilic (pink) and cyanophilic
(blue-green) cytoplasm, haematoxylin (blue-purple) nuclei. Stains absorb light, so each painted layer multiplies
the pixels below it by its transmittance: overlapping cells darken each other as they do under a microscope.
"""

from __future__ import annotations

import colorsys
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image, ImageDraw, ImageFilter

from cyto_ssrl.data.config import SyntheticConfig
from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import write_atomic

BACKGROUND = (243, 242, 238)
EOSINOPHILIC = (238, 150, 172)
CYANOPHILIC = (128, 198, 196)
NUCLEUS = (72, 58, 118)
HYPERCHROMATIC = (50, 30, 100)
DEBRIS = (95, 80, 70)
CLASS_COLORS = {"positive": [220, 40, 40], "negative": [40, 160, 60]}
POSITIVE_LOOKS = ("distinct", "shared")  # SyntheticConfig.positive_look: what positive cells look like
LOWRES_UM = 4.0  # pixel size of the mucus/haze layer, which is smooth enough to draw small and upsample


def generate_cohort(output_dir: str | Path, cfg: SyntheticConfig, workers: int = 1) -> pd.DataFrame:
    """Write cfg.n_slides slides with GeoJSON annotations and slides.csv into output_dir; return the table.

    Slides are drawn in up to `workers` processes: each has its own random stream, so the cohort is the same.
    """
    _check(cfg)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    n_pos = round(cfg.n_slides * cfg.positive_slide_fraction)
    labels = rng.permutation(["positive"] * n_pos + ["negative"] * (cfg.n_slides - n_pos))
    jobs = [(out, i, str(label), cfg) for i, label in enumerate(labels)]
    if min(workers, len(jobs)) <= 1:
        rows = list(map(_slide_job, jobs))
    else:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            rows = list(pool.map(_slide_job, jobs))
    table = pd.DataFrame(rows)
    write_atomic(out / "slides.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


def _slide_job(job) -> dict:
    out, i, label, cfg = job
    slide_rng = np.random.default_rng([cfg.seed, i])  # one stream per slide: slides do not depend on each other
    return _make_slide(out, f"slide_{i:03d}", f"patient_{i:03d}", label, cfg.mpps[i % len(cfg.mpps)], cfg, slide_rng)


def _check(cfg: SyntheticConfig) -> None:
    if cfg.n_slides < 1 or not cfg.mpps or min(cfg.mpps) <= 0:
        raise CytoError("SyntheticConfig needs n_slides >= 1 and positive mpps")
    if not (0 <= cfg.positive_slide_fraction <= 1 and 0 <= cfg.prevalence <= 1):
        raise CytoError("SyntheticConfig positive_slide_fraction and prevalence must lie in [0, 1]")
    if cfg.compression not in ("jpeg", "zlib"):
        raise CytoError(f"SyntheticConfig compression must be 'jpeg' or 'zlib', not {cfg.compression!r}")
    if cfg.levels < 1 or cfg.level_downsample < 2 or cfg.deposit_um <= 0 or cfg.margin_um < 0:
        raise CytoError("SyntheticConfig needs levels >= 1, level_downsample >= 2 and a positive deposit_um")
    if cfg.positive_look not in POSITIVE_LOOKS:
        raise CytoError(f"SyntheticConfig positive_look must be one of {POSITIVE_LOOKS}, not {cfg.positive_look!r}")


def _make_slide(out: Path, slide_id: str, patient_id: str, label: str, mpp: float, cfg: SyntheticConfig, rng) -> dict:
    """Draw one slide, write its TIFF and GeoJSON, and return its slides.csv row."""
    px = 1.0 / mpp  # pixels per micrometre
    side = round((cfg.deposit_um + 2 * cfg.margin_um) * px)
    radius = _deposit_shape(rng, cfg.deposit_um / 2)
    stain = _stain(rng)
    img = _background(rng, side, px, radius, stain)
    centre_um = cfg.deposit_um / 2 + cfg.margin_um

    area_mm2 = np.pi * (cfg.deposit_um / 2000) ** 2
    centres = _cell_centres(rng, max(1, rng.poisson(cfg.cells_per_mm2 * area_mm2)), radius) + centre_um
    positive = np.zeros(len(centres), bool)
    if label == "positive":
        positive = rng.random(len(centres)) < cfg.prevalence
        if not positive.any():  # a positive slide always carries at least one positive cell
            positive[rng.integers(len(centres))] = True
    _debris(img, rng, _cell_centres(rng, int(area_mm2 * 250), radius) + centre_um, px, stain)
    cells = [_draw_cell(img, rng, c * px, pos, px, stain, cfg.positive_look) for c, pos in zip(centres, positive)]

    tiff, geojson = out / f"{slide_id}.tiff", out / f"{slide_id}.geojson"
    write_atomic(
        tiff,
        lambda tmp: write_pyramid(
            tmp,
            img,
            mpp,
            levels=cfg.levels,
            downsample=cfg.level_downsample,
            tile=cfg.tiff_tile,
            compression=cfg.compression,
        ),
    )
    write_atomic(geojson, lambda tmp: tmp.write_text(json.dumps(_feature_collection(cells, side))))
    return dict(
        slide_id=slide_id,
        patient_id=patient_id,
        label=label,
        mpp=mpp,
        width=side,
        height=side,
        n_cells=len(cells),
        n_positive_cells=int(positive.sum()),
        path=str(tiff),
        annotation_path=str(geojson),
    )


def _stain(rng):
    """Per-slide staining and scanner variation: a small hue shift, a saturation and a brightness factor."""
    dh, sat, val = rng.normal(0, 0.02), rng.uniform(0.75, 1.25), rng.uniform(0.92, 1.04)

    def shift(rgb):
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        r, g, b = colorsys.hsv_to_rgb((h + dh) % 1, min(1, s * sat), min(1, v * val))
        return np.array([r, g, b], np.float32) * 255

    return shift


def _deposit_shape(rng, r_um: float) -> np.ndarray:
    """Radius (um) of a roughly round, irregular deposit at each degree, never beyond r_um: cells stay on the slide."""
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    wobble = sum(rng.uniform(0, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 7))
    return r_um * (1 - 0.15 * (1 - (wobble - wobble.min()) / np.ptp(wobble)))


def _cell_centres(rng, n: int, radius: np.ndarray) -> np.ndarray:
    """n points (um, from the deposit centre) inside the deposit: 60 % scattered, 40 % in overlapping clusters."""
    r_max = radius.max()
    parents = rng.uniform(-r_max, r_max, (max(1, n // 12), 2))
    points = []
    while len(points) < n:
        if rng.random() < 0.6:
            p = rng.uniform(-r_max, r_max, 2)
        else:
            p = parents[rng.integers(len(parents))] + rng.normal(0, 30, 2)  # clusters about a cell across
        angle = int(np.degrees(np.arctan2(p[1], p[0])) % 360)
        if np.hypot(*p) < radius[angle]:
            points.append(p)
    return np.array(points).reshape(-1, 2)


def _background(rng, side: int, px: float, radius: np.ndarray, stain) -> np.ndarray:
    """Near-white glass with faint pink/blue mucus strands and haze over the deposit, plus slight sensor noise."""
    n = max(2, round(side / px / LOWRES_UM))
    scale = n / (side / px)  # low-res pixels per micrometre
    centre = n / 2
    haze = Image.new("L", (n, n), 0)
    angles = np.radians(np.arange(360))
    outline = np.c_[np.cos(angles), np.sin(angles)] * radius[:, None] * scale + centre
    ImageDraw.Draw(haze).polygon([tuple(p) for p in outline], fill=18)  # a faint bluish film over the whole deposit
    light = np.ones((n, n, 3), np.float32) * _transmit(stain(BACKGROUND), 1.0)
    light *= _transmit(stain(CYANOPHILIC), _blur(haze, 3))
    for _ in range(rng.integers(6, 14)):  # mucus: wandering strands, pink or blue-green
        strand = Image.new("L", (n, n), 0)
        walk = np.cumsum(rng.normal(0, 12 * scale, (12, 2)), axis=0) + rng.uniform(-0.6, 0.6, 2) * radius.min() * scale
        ImageDraw.Draw(strand).line(
            [tuple(p + centre) for p in walk],
            fill=int(rng.uniform(10, 35)),
            width=max(1, int(rng.uniform(8, 30) * scale)),
            joint="curve",
        )
        colour = stain(EOSINOPHILIC if rng.random() < 0.5 else CYANOPHILIC)
        light *= _transmit(colour, _blur(strand, 2))
    img = np.asarray(Image.fromarray((light * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)).copy()
    noise = rng.integers(-3, 4, (256, side, 1), dtype=np.int16)  # reused per band of rows: too faint to show a repeat
    for y in range(0, side, 256):
        band = img[y : y + 256]
        band[...] = np.clip(band + noise[: len(band)], 0, 255)
    return img


def _blur(mask: Image.Image, radius: float) -> np.ndarray:
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255


def _transmit(rgb, alpha) -> np.ndarray:
    """Fraction of light a stain layer of colour rgb and opacity alpha lets through (alpha scalar or HxW)."""
    return 1 - np.asarray(alpha, np.float32)[..., None] * (1 - np.asarray(rgb, np.float32) / 255)


def _outline(rng, centre, r: float, n: int, jitter: float, aspect: float = 1.0) -> np.ndarray:
    """A closed-shape polygon around centre: n vertices at jittered angles and radii, stretched by aspect."""
    theta = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
    wobble = sum(rng.uniform(0, jitter) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    radii = r * (1 + wobble + rng.normal(0, jitter / 3, n))
    pts = np.c_[radii * np.cos(theta), aspect * radii * np.sin(theta)]
    turn = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return pts @ rot.T + centre


def _texture(rng, shape, grain_px: float, lo: float, hi: float) -> np.ndarray:
    """Blotchy multiplicative texture: uniform noise on a coarse grid, smoothly upsampled."""
    h, w = shape
    grid = rng.uniform(lo, hi, (max(2, int(h / grain_px)), max(2, int(w / grain_px)))).astype(np.float32)
    return np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BILINEAR))


def _paint(img, rng, poly, rgb, alpha: float, soft_px: float, edge_px: int = 0, grain=None) -> None:
    """Multiply the pixels under poly by the layer's transmittance; edge_px draws a denser rim (cell border)."""
    pad = int(2 * soft_px) + 2
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - pad, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + pad, img.shape[1::-1])
    if x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    fill = 150 if edge_px else 255
    ImageDraw.Draw(mask).polygon([tuple(p) for p in poly - (x0, y0)], fill=fill, outline=255, width=edge_px)
    a = _blur(mask, soft_px) * alpha
    if grain is not None:
        a *= _texture(rng, a.shape, *grain)
    region = img[y0:y1, x0:x1]
    region[...] = region * _transmit(rgb, np.clip(a, 0, 1)) + 0.5


def _draw_cell(img, rng, centre, positive: bool, px: float, stain, positive_look: str) -> dict:
    """Paint one squamous cell at centre (level-0 px); return its cytoplasm outline and nucleus centre."""
    # HSIL-like: small rounder cell, dense cytoplasm, big hyperchromatic irregular nucleus
    if positive and positive_look == "distinct":
        cyto_d = rng.uniform(18, 35)
        nuc_d = min(rng.uniform(10, 20), 0.75 * cyto_d)
        cyto = _outline(rng, centre, cyto_d / 2 * px, rng.integers(10, 16), 0.08, rng.uniform(0.75, 1))
        colour, alpha = (CYANOPHILIC if rng.random() < 0.7 else EOSINOPHILIC), rng.uniform(0.55, 0.75)
        nucleus_args = (HYPERCHROMATIC, rng.uniform(0.85, 0.97), 24, 0.12, (2.5 * px, 0.55, 1.25))
    else:  # superficial/intermediate: large flat polygonal cell, small dense round nucleus (enlarged: "shared")
        cyto_d, nuc_d = rng.uniform(35, 60), rng.uniform(10, 14) if positive else rng.uniform(5, 8)
        cyto = _outline(rng, centre, cyto_d / 2 * px, rng.integers(5, 9), 0.15, rng.uniform(0.6, 1))
        colour, alpha = (EOSINOPHILIC if rng.random() < 0.5 else CYANOPHILIC), rng.uniform(0.3, 0.5)
        # small pyknotic (superficial) nuclei are the densest; larger intermediate ones show paler chromatin
        nucleus_args = (NUCLEUS, max(0.75, 0.95 - 0.06 * (nuc_d - 5)), 20, 0.03, (1.0 * px, 0.8, 1.1))
    _paint(img, rng, cyto, stain(colour), alpha, 0.6 * px, edge_px=max(1, round(0.8 * px)), grain=(8 * px, 0.7, 1.2))
    if not positive and rng.random() < 0.4:  # thin flat cells often fold over at an edge: a doubled, denser sliver
        _paint(img, rng, _fold(rng, cyto, centre), stain(colour), alpha * 0.7, 0.6 * px)
    nuc_centre = centre + rng.normal(0, 0.08 * (cyto_d - nuc_d) * px, 2)
    nuc_rgb, nuc_alpha, n_vertices, jitter, grain = nucleus_args
    nucleus = _outline(rng, nuc_centre, nuc_d / 2 * px, n_vertices, jitter, rng.uniform(0.8, 1))
    _paint(img, rng, nucleus, stain(nuc_rgb), nuc_alpha, 0.4 * px, grain=grain)
    return dict(outline=cyto, nucleus=nuc_centre, positive=positive)


def _fold(rng, outline: np.ndarray, centre) -> np.ndarray:
    """A folded-over border: a sliver between two neighbouring corners and a point pulled in towards the centre."""
    i = rng.integers(len(outline))
    a, b = outline[i], outline[(i + 1) % len(outline)]
    inner = (a + b) / 2 + rng.uniform(0.1, 0.3) * (centre - (a + b) / 2)
    return np.array([a, inner, b])


def _debris(img, rng, centres_um, px: float, stain) -> None:
    """Dark specks of debris and, for a fifth of them, inflammatory cells (a few small dark lobes)."""
    for c in centres_um * px:
        if rng.random() < 0.2:  # a neutrophil: its nucleus in 2-4 small lobes
            for lobe in c + rng.normal(0, 1.5 * px, (rng.integers(2, 5), 2)):
                outline = _outline(rng, lobe, rng.uniform(1.2, 2.0) * px, 10, 0.05)
                _paint(img, rng, outline, stain(NUCLEUS), 0.85, 0.3 * px)
        else:
            outline = _outline(rng, c, rng.uniform(0.5, 2.0) * px, 6, 0.2)
            _paint(img, rng, outline, stain(DEBRIS), rng.uniform(0.5, 0.9), 0.3 * px)


def _feature_collection(cells: list[dict], side: int) -> dict:
    """QuPath's GeoJSON export form: one detection per cell, cytoplasm polygon, nucleus centroid as measurements."""
    features = []
    for cell in cells:
        ring = np.clip(cell["outline"], 0, side - 1).round(2).tolist()
        x, y = np.clip(cell["nucleus"], 0, side - 1).round(2).tolist()
        name = "positive" if cell["positive"] else "negative"
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": CLASS_COLORS[name]},
                    "measurements": {"Nucleus: Centroid X px": x, "Nucleus: Centroid Y px": y},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_pyramid(
    path: Path, img: np.ndarray, mpp: float, *, levels: int, downsample: int, tile: int, compression: str
) -> None:
    """Tiled pyramid OpenSlide reads as generic-tiff: level 0 first, reduced levels flagged subfiletype=1."""
    level = Image.fromarray(img)
    with tifffile.TiffWriter(path, bigtiff=img.nbytes > 2**31) as tif:
        for k in range(levels):
            if k:
                level = level.reduce(downsample)
            tif.write(
                np.asarray(level),
                photometric="rgb",
                tile=(tile, tile),
                compression=compression,
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
                subfiletype=1 if k else 0,
                maxworkers=2,
            )
