"""The synthetic cohort: OpenSlide-readable pyramids whose annotations match what is drawn, seeded."""

import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest

from cyto_ssrl.data.config import SyntheticConfig
from cyto_ssrl.data.synthetic import generate_cohort
from cyto_ssrl.errors import CytoError

SMALL = dict(n_slides=4, deposit_um=400.0, margin_um=60.0, prevalence=0.05)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    cfg = SyntheticConfig(**SMALL)
    out = tmp_path_factory.mktemp("cohort")
    return cfg, out, generate_cohort(out, cfg)


def _features(path):
    return json.loads(open(path).read())["features"]


def _nucleus(feature):
    m = feature["properties"]["measurements"]
    return m["Nucleus: Centroid X px"], m["Nucleus: Centroid Y px"]


def _is_positive(feature):
    return feature["properties"]["classification"]["name"] == "positive"


def test_table_matches_the_files(cohort):
    cfg, out, table = cohort
    assert list(table.columns) == [
        "slide_id",
        "patient_id",
        "label",
        "mpp",
        "width",
        "height",
        "n_cells",
        "n_positive_cells",
        "path",
        "annotation_path",
    ]
    assert table.equals(pd.read_csv(out / "slides.csv"))
    assert list(table.slide_id) == [f"slide_{i:03d}" for i in range(cfg.n_slides)]
    assert table.patient_id.is_unique
    assert (table.label == "positive").sum() == round(cfg.n_slides * cfg.positive_slide_fraction)
    assert list(table.mpp) == [cfg.mpps[i % len(cfg.mpps)] for i in range(cfg.n_slides)]
    assert not list(out.glob(".*.tmp"))


def test_openslide_reads_pyramid_and_mpp(cohort):
    cfg, _, table = cohort
    for row in table.itertuples():
        slide = openslide.OpenSlide(row.path)
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.dimensions == (row.width, row.height)
        assert slide.level_count == cfg.levels
        expected = [cfg.level_downsample**k for k in range(cfg.levels)]
        assert slide.level_downsamples == pytest.approx(expected, rel=1e-2)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(row.mpp, rel=1e-4)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(row.mpp, rel=1e-4)
        # Same physical field of view whatever the scanner's mpp.
        assert row.width * row.mpp == pytest.approx(cfg.deposit_um + 2 * cfg.margin_um, abs=1)


def test_annotations_match_counts_and_labels(cohort):
    _, _, table = cohort
    for row in table.itertuples():
        features = _features(row.annotation_path)
        assert len(features) == row.n_cells > 0
        assert sum(map(_is_positive, features)) == row.n_positive_cells
        if row.label == "negative":
            assert row.n_positive_cells == 0
        else:
            assert row.n_positive_cells >= 1
        for f in features:
            assert f["properties"]["objectType"] == "detection"
            ring = f["geometry"]["coordinates"][0]
            assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4


def test_every_coordinate_lies_inside_the_slide(cohort):
    _, _, table = cohort
    for row in table.itertuples():
        for f in _features(row.annotation_path):
            points = np.array(f["geometry"]["coordinates"][0] + [list(_nucleus(f))])
            assert (points >= 0).all()
            assert (points[:, 0] < row.width).all() and (points[:, 1] < row.height).all()


def test_positive_nuclei_are_really_drawn(cohort):
    _, _, table = cohort
    row = table[table.n_positive_cells > 0].iloc[0]
    slide = openslide.OpenSlide(row.path)
    background = np.asarray(slide.read_region((0, 0), 0, (64, 64)).convert("L"), float).mean()
    assert background > 200
    for f in filter(_is_positive, _features(row.annotation_path)):
        x, y = (int(v) for v in _nucleus(f))
        around = np.asarray(slide.read_region((x - 4, y - 4), 0, (9, 9)).convert("L"), float).mean()
        assert around < 0.6 * background


def test_same_seed_same_annotations_other_seed_different(tmp_path):
    def annotations(name, seed):
        table = generate_cohort(tmp_path / name, SyntheticConfig(**{**SMALL, "n_slides": 2, "seed": seed}))
        return [open(p).read() for p in table.annotation_path]

    first = annotations("a", 7)
    assert annotations("b", 7) == first
    assert annotations("c", 8) != first


def test_worker_processes_draw_the_same_cohort(tmp_path):
    cfg = SyntheticConfig(**{**SMALL, "n_slides": 3})
    serial, parallel = generate_cohort(tmp_path / "serial", cfg), generate_cohort(tmp_path / "parallel", cfg, workers=2)
    assert serial.drop(columns=["path", "annotation_path"]).equals(parallel.drop(columns=["path", "annotation_path"]))
    for a, b in zip(serial.itertuples(), parallel.itertuples()):
        assert Path(a.annotation_path).read_text() == Path(b.annotation_path).read_text()
        assert Path(a.path).read_bytes() == Path(b.path).read_bytes()


def test_zlib_compression_opens(tmp_path):
    cfg = SyntheticConfig(n_slides=1, deposit_um=150.0, margin_um=40.0, compression="zlib", levels=2)
    row = generate_cohort(tmp_path, cfg).iloc[0]
    assert openslide.OpenSlide(row.path).level_count == 2


def test_bad_config_is_a_one_line_error(tmp_path):
    with pytest.raises(CytoError, match="compression"):
        generate_cohort(tmp_path, SyntheticConfig(compression="lzw"))
    with pytest.raises(CytoError, match="positive_look must be one of"):
        generate_cohort(tmp_path, SyntheticConfig(positive_look="odd"))


def _nucleus_area_um2(row, feature) -> float:
    """Area (um^2) of the dark blob under a cell's nucleus centre: pixels much darker than the glass around it."""
    slide = openslide.OpenSlide(row.path)
    x, y = (int(v) for v in _nucleus(feature))
    patch = np.asarray(slide.read_region((x - 40, y - 40), 0, (81, 81)).convert("L"), float)
    return (patch < 150).sum() * row.mpp**2


def test_positive_look_is_the_positive_controls_knob(tmp_path):
    """ "distinct" positives are small dense cells with big hyperchromatic nuclei; "shared" ones are negative-looking
    cells whose round nucleus is enlarged: their nuclei are far larger than negatives' either way, and the two
    looks differ in the cell around them."""
    looks = {}
    for look in ("distinct", "shared"):
        cfg = SyntheticConfig(**{**SMALL, "n_slides": 2, "prevalence": 0.5, "positive_look": look})
        row = generate_cohort(tmp_path / look, cfg).iloc[0]
        row = row if row.n_positive_cells else generate_cohort(tmp_path / look, cfg).iloc[1]
        features = _features(row.annotation_path)
        areas = {
            name: np.median([_nucleus_area_um2(row, f) for f in features if _is_positive(f) == positive][:20])
            for name, positive in (("positive", True), ("negative", False))
        }
        assert areas["positive"] > 2 * areas["negative"], (look, areas)
        looks[look] = [f["geometry"]["coordinates"] for f in features if _is_positive(f)]
    sizes = {look: np.median([np.ptp(np.array(c[0]), axis=0).max() for c in cells]) for look, cells in looks.items()}
    assert sizes["shared"] > 1.3 * sizes["distinct"], sizes  # shared positives keep the large squamous cytoplasm
