"""Stage 1 on real pixels: CRIC fields, Aperio slides and generated pyramids, at the same microns per tile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from cyto_ssrl.config import preset
from cyto_ssrl.data.annotations import read_csv_points
from cyto_ssrl.data.config import TILE_PRESETS, CsvAnnotationConfig
from cyto_ssrl.data.synthetic import write_pyramid
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.errors import CytoError

from .helpers import CRIC_SIZE, CRIC_SPARSE, CRIC_TEN, cric_fields


def cric_config(**overrides):
    # Real names (public data): the label check finds each tile's field by its slide id.
    cfg = preset(TILE_PRESETS, "paper", tile_size=256, default_mpp=0.25, workers=2, pseudonymize=False, **overrides)
    cfg.csv = CsvAnnotationConfig(image_size=CRIC_SIZE)
    return cfg


@pytest.fixture
def cric(shared_data, tmp_path):
    cfg = cric_config()
    manifest = make_tiles(
        "slides",
        cric_fields(shared_data, tmp_path / "fields", CRIC_TEN),
        tmp_path / "cric",
        cfg,
        annotations=shared_data / "cric" / "classifications.csv",
    )
    return manifest, cfg


def test_cric_fields_tile_with_cell_labels(cric, shared_data):
    manifest, cfg = cric
    assert len(manifest) > 20 and set(manifest["partition"]) == {"ssrl", "downstream", "evaluation"}
    assert manifest.groupby("slide_id")["partition"].nunique().max() == 1, "a slide straddles partitions"
    for partition, rows in manifest.groupby("partition"):
        assert {"positive", "negative"} <= set(rows["label"]), partition
    # Every tile that holds an abnormal cell's nucleus (coordinates rescaled from 1376x1020) is positive.
    cells = read_csv_points(shared_data / "cric" / "classifications.csv", cfg.csv)
    checked = 0
    for row in manifest.itertuples():
        image = Image.open(shared_data / "cric" / "dataset" / f"{row.slide_id}.png")
        found = cells[f"{row.slide_id}.png"]
        x = found["x"] * image.width / CRIC_SIZE[0]
        y = found["y"] * image.height / CRIC_SIZE[1]
        inside = (x >= row.x) & (x < row.x + row.extent) & (y >= row.y) & (y < row.y + row.extent)
        if (found["label"][inside] == "positive").any():
            assert row.label == "positive", row.tile_id
            checked += 1
    assert checked >= 5
    tile = Image.open(manifest["path"].iloc[0])
    assert tile.size == (256, 256)


def test_tile_covers_the_same_microns_on_every_scanner(tmp_path):
    """A 40 um disc drawn on slides scanned at 0.243 and 0.180 um/px has the same area in tiles at 0.293."""
    areas = {}
    for mpp in (0.243, 0.180):
        side = round(400 / mpp)  # 400 um of glass
        image = Image.new("RGB", (side, side), (245, 245, 245))
        radius = 20 / mpp
        centre = side / 2
        ImageDraw.Draw(image).ellipse(
            [centre - radius, centre - radius, centre + radius, centre + radius], fill=(60, 30, 90)
        )
        folder = tmp_path / f"mpp{mpp}"
        folder.mkdir()
        write_pyramid(
            folder / f"slide_{int(mpp * 1000)}.tiff",
            np.asarray(image),
            mpp,
            levels=3,
            downsample=2,
            tile=256,
            compression="zlib",
        )
        cfg = preset(TILE_PRESETS, "paper", tile_size=128, min_deposit=0.0, workers=1, partitions={"ssrl": 1})
        cfg.slide_mpp = {}
        from cyto_ssrl.data.cutting import write_tiles
        from cyto_ssrl.data.slide_plan import plan_slides

        plan = plan_slides(folder, cfg, None).assign(partition="ssrl", source="slides")
        manifest = write_tiles(plan, tmp_path / f"out{mpp}", cfg)
        assert np.allclose(manifest["extent"] * manifest["source_mpp"], 128 * 0.293)
        dark = sum((np.asarray(Image.open(p).convert("L")) < 128).sum() for p in manifest["path"])
        areas[mpp] = dark * 0.293**2
    expected = np.pi * 20**2
    for mpp, area in areas.items():
        assert area == pytest.approx(expected, rel=0.1), (mpp, area)


def test_aperio_slides_levels_and_missing_mpp(shared_data, tmp_path):
    slides = shared_data / "slides"
    cfg = preset(
        TILE_PRESETS, "paper", tile_size=128, target_mpp=1.0, workers=2, min_deposit=0.3, partitions={"ssrl": 1}
    )
    with pytest.raises(CytoError, match="tcga-cr-7395-01a-01-ts1.*no um/px"):
        make_tiles("slides", slides, tmp_path / "a", cfg)
    assert not (tmp_path / "a" / "manifest.parquet").exists()
    cfg.slide_mpp = {"tcga-cr-7395-01a-01-ts1": 0.5}
    from cyto_ssrl.data.slide_plan import plan_slides

    plan = plan_slides(slides, cfg, None).groupby("slide_id").first()
    # TCGA: 2 levels (downsample 2); 1.0 um/px from 0.5 um/px reads level 1. CMU: one level at 0.499 um/px.
    assert plan.loc["tcga-cr-7395-01a-01-ts1", "level"] == 1
    assert plan.loc["tcga-cr-7395-01a-01-ts1", "extent"] == pytest.approx(256)
    assert plan.loc["CMU-1-Small-Region", "source_mpp"] == pytest.approx(0.499)
    assert plan.loc["CMU-1-Small-Region", "level"] == 0


def test_resampling_is_antialiased_and_shows_glass_outside_the_slide(shared_data):
    from cyto_ssrl.data.slides import open_slide, resample_region

    slide = open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    region = slide.read_region((1000, 1000), 0, (309, 309))
    tile = np.asarray(resample_region(region, 256), dtype=int)
    pillow = np.asarray(region.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR), dtype=int)
    assert tile.shape == (256, 256, 3) and np.abs(tile - pillow).max() <= 1  # Pillow's antialiased filter
    assert np.array_equal(np.asarray(resample_region(region, 309)), np.asarray(region.convert("RGB")))
    width, height = slide.dimensions
    edge = np.asarray(resample_region(slide.read_region((width - 100, height - 100), 0, (200, 200)), 400))
    assert edge.shape == (400, 400, 3) and (edge[220:, 220:] == 255).all()  # transparent -> white glass
    assert edge[:180, :180].mean() < 250  # the slide's own pixels are kept


@pytest.mark.slow
def test_all_fifty_cric_fields_tile_with_the_sparse_one_skipped(shared_data, tmp_path):
    """The README's CRIC command on every field of shared/data: it used to stop at the sparse field."""
    cfg = preset(TILE_PRESETS, "tiny", default_mpp=0.25, pseudonymize=False)
    cfg.csv = CsvAnnotationConfig(image_size=CRIC_SIZE)
    fields = shared_data / "cric" / "dataset"
    manifest = make_tiles("slides", fields, tmp_path / "out", cfg, shared_data / "cric" / "classifications.csv")
    assert [row["slide_id"] for row in manifest.attrs["skipped_slides"]] == [CRIC_SPARSE]
    # The other 49 give tiles (a field can still lose all of its tiles to a 1:1 draw of its partition).
    assert len(list(fields.glob("*.png"))) == 50 and CRIC_SPARSE not in set(manifest["slide_id"])
    assert manifest.loc[manifest["partition"] == "ssrl", "slide_id"].nunique() >= 30
    counts = pd.crosstab(manifest["partition"], manifest["label"])
    assert (counts[["positive", "negative"]] > 0).all().all()
    for name in ("downstream", "evaluation"):  # 1:1, of positive and negative tiles only
        assert counts.loc[name, "positive"] == counts.loc[name, "negative"] == counts.loc[name].sum() / 2, name
