"""Stage 1 on real pixels: CRIC fields, Herlev and SIPaKMeD crops, Aperio slides, and generated pyramids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from cyto_ssrl.config import TILE_PRESETS, CsvAnnotationConfig, preset
from cyto_ssrl.data import make_tiles
from cyto_ssrl.data.annotations import read_csv_points
from cyto_ssrl.data.synthetic import write_pyramid
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages import run_tiles

from .conftest import ROOT

CRIC_SIZE = (1376, 1020)  # CRIC's coordinates refer to the original image size (shared/data/README.md)


def cric_config(**overrides):
    cfg = preset(TILE_PRESETS, "paper", tile_size=256, default_mpp=0.25, workers=2, **overrides)
    cfg.csv = CsvAnnotationConfig(image_size=CRIC_SIZE)
    return cfg


@pytest.fixture
def cric(shared_data, tmp_path):
    cfg = cric_config()
    manifest = make_tiles("slides", shared_data / "cric" / "dataset", tmp_path / "cric", cfg,
                          annotations=shared_data / "cric" / "classifications.csv")  # fmt: skip
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
        image = Image.open(row.source_path)
        found = cells[row.source_path.rsplit("/", 1)[-1]]
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
        ImageDraw.Draw(image).ellipse([centre - radius, centre - radius, centre + radius, centre + radius], fill=(60, 30, 90))
        folder = tmp_path / f"mpp{mpp}"
        folder.mkdir()
        write_pyramid(folder / f"slide_{int(mpp * 1000)}.tiff", np.asarray(image), mpp, levels=3, downsample=2,
                      tile=256, compression="zlib")  # fmt: skip
        cfg = preset(TILE_PRESETS, "paper", tile_size=128, min_deposit=0.0, workers=1,
                     partitions={"ssrl": 1})  # fmt: skip
        cfg.slide_mpp = {}
        from cyto_ssrl.data.tiles import plan_slides, write_tiles

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
    cfg = preset(TILE_PRESETS, "paper", tile_size=128, target_mpp=1.0, workers=2, min_deposit=0.3,
                 partitions={"ssrl": 1})  # fmt: skip
    with pytest.raises(CytoError, match="tcga-cr-7395-01a-01-ts1.*no um/px"):
        make_tiles("slides", slides, tmp_path / "a", cfg)
    assert not (tmp_path / "a" / "manifest.parquet").exists()
    cfg.slide_mpp = {"tcga-cr-7395-01a-01-ts1": 0.5}
    from cyto_ssrl.data.tiles import plan_slides

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


def test_herlev_cells_one_tile_per_crop_grouped_by_source_image(shared_data, tmp_path):
    cfg = preset(TILE_PRESETS, "tiny", tile_size=128, workers=2)
    manifest = make_tiles("cells", shared_data / "herlev", tmp_path / "h", cfg)
    assert len(manifest) == 210
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    normal = manifest["tile_id"].str.contains("normal_")
    assert (manifest.loc[normal, "label"] == "negative").all() and (manifest.loc[~normal, "label"] == "positive").all()
    sizes = {Image.open(p).size for p in manifest["path"].sample(20, random_state=0)}
    assert sizes == {(128, 128)}


def test_a_small_collection_takes_its_own_partition_shares(shared_data, tmp_path):
    from cyto_ssrl.cli import parse_partitions

    shares = parse_partitions("ssrl=0.5, downstream=0.3, evaluation=0.2")
    cfg = preset(TILE_PRESETS, "tiny", workers=2, partitions=shares)
    counts = make_tiles("cells", shared_data / "herlev", tmp_path / "h", cfg)["partition"].value_counts()
    assert counts.to_dict() == pytest.approx({"ssrl": 105, "downstream": 63, "evaluation": 42}, abs=3)
    for bad, message in [("ssrl=0.5,evaluaton=0.5", "partition 'evaluaton' is not one of ssrl, downstream"),
                         ("ssrl=half", "partition share 'ssrl=half' is not a number")]:  # fmt: skip
        with pytest.raises(CytoError, match=message):
            parse_partitions(bad)


def test_sipakmed_leaves_metaplastic_out_and_pads_without_stretching(shared_data, tmp_path):
    cfg = preset(TILE_PRESETS, "paper", tile_size=512, workers=1, partitions={"ssrl": 1, "downstream": 1})
    manifest = make_tiles("cells", shared_data / "sipakmed", tmp_path / "s", cfg)
    assert len(manifest) == 20 and not manifest["tile_id"].str.contains("Metaplastic").any()
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    row = manifest[manifest["tile_id"].str.contains("Dyskeratotic")].iloc[0]
    crop = np.asarray(Image.open(row.source_path).convert("RGB")).astype(int)
    tile = np.asarray(Image.open(row.path)).astype(int)
    top, left = (512 - crop.shape[0]) // 2, (512 - crop.shape[1]) // 2
    centre = tile[top : top + crop.shape[0], left : left + crop.shape[1]]
    assert np.abs(centre - crop).mean() < 6  # the crop at its own size (JPEG noise only), not resized


def test_tiles_run_is_tracked(store, tmp_path):
    run_id, manifest_path = run_tiles("synthetic", None, str(tmp_path / "syn"), "tiny", n_slides=None)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tile_size"] == "64" and run.data.params["source"] == "synthetic"
    manifest = pd.read_parquet(manifest_path)
    assert run.data.metrics["n_tiles"] == len(manifest)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiles-synthetic"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"manifest.parquet", "summary.md", "summary.csv", "summary_per_slide.csv"} <= artifacts
    assert manifest.groupby("slide_id")["partition"].nunique().max() == 1


# ------------------------------------------------------------------------------------------------ bad input


def _slides_folder(tmp_path, files: dict[str, object]):
    folder = tmp_path / "in"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(folder / name)
        else:
            (folder / name).write_text(content)
    return folder


def _field(colour=(240, 240, 240), cell=True) -> Image.Image:
    image = Image.new("RGB", (400, 400), colour)
    if cell:
        ImageDraw.Draw(image).ellipse([50, 50, 350, 350], fill=(150, 90, 160))
    return image


def _geojson(cells):
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                 "properties": {"classification": {"name": name}}} for x, y, name in cells]  # fmt: skip
    return json.dumps({"type": "FeatureCollection", "features": features})


SMALL = dict(tile_size=64, target_mpp=1.0, default_mpp=1.0, workers=1, partitions={"ssrl": 1})


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.svs": "not a slide"}, "a.svs is not a slide"),
        ({"a.png": _field(), "sub/a.png": _field()}, "duplicate slide id 'a'"),
        ({"a.png": _field(), "a.geojson": _geojson([(500, 10, "positive")])}, "outside the slide"),
        ({"a.png": _field(), "a.geojson": _geojson([(10, 10, "tumour")])}, "unknown cell class 'tumour'"),
        ({"a.png": _field(cell=False)}, "no tile of 64 level-0 px has 50% cell deposit"),
        # Two slides are planned in two worker processes, which parse their own annotations.
        ({"a.png": _field(), "b.png": _field(), "b.geojson": "{broken"}, "b.geojson is not valid GeoJSON"),
    ],
)
def test_bad_slides_fail_with_one_line_and_write_nothing(tmp_path, files, message):
    folder = _slides_folder(tmp_path, files)
    cfg = preset(TILE_PRESETS, "paper", **{**SMALL, "workers": 2})
    with pytest.raises(CytoError, match=message) as caught:
        make_tiles("slides", folder, tmp_path / "out", cfg)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "manifest.parquet").exists() and not (tmp_path / "out" / "tiles").exists()


def test_a_slide_without_mpp_is_refused(tmp_path):
    folder = _slides_folder(tmp_path, {"field.png": _field()})
    cfg = preset(TILE_PRESETS, "paper", **{**SMALL, "default_mpp": None})
    with pytest.raises(CytoError, match="slide 'field' has no um/px"):
        make_tiles("slides", folder, tmp_path / "out", cfg)


def test_impossible_split_and_bad_cell_folders(shared_data, tmp_path):
    # SIPaKMeD here has 3 negative cluster images: they cannot fill 4 partitions.
    four = {"ssrl": 3, "downstream": 1, "evaluation": 1, "extra": 1}
    cfg = preset(TILE_PRESETS, "tiny", workers=1, partitions=four)
    with pytest.raises(CytoError, match="split cannot be met: partition '.*' gets no negative"):
        make_tiles("cells", shared_data / "sipakmed", tmp_path / "s", cfg)
    cfg.partitions = TILE_PRESETS["tiny"].partitions
    (tmp_path / "empty").mkdir()
    with pytest.raises(CytoError, match="no cell images"):
        make_tiles("cells", tmp_path / "empty", tmp_path / "e", cfg)
    (tmp_path / "odd" / "im_Weird").mkdir(parents=True)
    _field().save(tmp_path / "odd" / "im_Weird" / "001_01.bmp")
    with pytest.raises(CytoError, match="unknown cell class 'im_Weird'"):
        make_tiles("cells", tmp_path / "odd", tmp_path / "o", cfg)


def test_failed_tiling_marks_the_run_failed(store, tmp_path):
    folder = _slides_folder(tmp_path, {"a.svs": "not a slide"})
    with pytest.raises(CytoError):
        run_tiles("slides", str(folder), str(tmp_path / "out"), "tiny")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FAILED"]


@pytest.mark.slow
def test_mlflow_run_tiles_entry_point(store, tmp_path, shared_data):
    """The MLproject entry point through `mlflow run` (local env manager), and a one-line error from the CLI."""
    out = tmp_path / "herlev_tiles"
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "tiles", "--env-manager", "local",
           "-P", "source=cells", "-P", f"input={shared_data / 'herlev'}", "-P", f"output={out}"]  # fmt: skip
    # `mlflow run --env-manager local` runs `python` from PATH: the interpreter running these tests.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_parquet(out / "manifest.parquet")) == 210
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FINISHED"] and runs["params.source"].iloc[0] == "cells"

    bad = subprocess.run([sys.executable, "-m", "entrypoints.tiles", "--source", "slides", "--input", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: input folder {tmp_path / 'nope'} does not exist"
