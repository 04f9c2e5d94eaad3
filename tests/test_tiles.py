"""Stage 1 on real pixels: CRIC fields, Herlev and SIPaKMeD crops, Aperio slides, and generated pyramids."""

from __future__ import annotations

import io
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

from cyto_ssrl.cli import parse_balance
from cyto_ssrl.config import preset
from cyto_ssrl.data.annotations import read_csv_points
from cyto_ssrl.data.config import TILE_PRESETS, CsvAnnotationConfig
from cyto_ssrl.data.pools import make_pool
from cyto_ssrl.data.synthetic import write_pyramid
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.downstream.budgets import budget_counts, draw_budget
from cyto_ssrl.downstream.features import labelled_tiles
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.tiles import run_tiles

from .conftest import ROOT

CRIC_SIZE = (1376, 1020)  # CRIC's coordinates refer to the original image size (shared/data/README.md)
# The first ten CRIC fields of shared/data (its MANIFEST.csv order): every Bethesda class, and both classes in every
# partition of a split of them. The label check below decodes the source field of every tile, so it runs on these.
CRIC_TEN = (
    "008df697b9283d9ad4774096584d2efb",
    "011fda505d7e4af4b8cc57545343624d",
    "023fcddb41b212f8ac3edde190d4ae5c",
    "02c7fb946ad5c5e5f9c1e1178c21fc92",
    "0f023f6ad3d33b33334016798995fe53",
    "424a7ee29385c53e950de973f411a30c",
    "77acea6065f24cef2351ef3bc2af43a1",
    "9b77f6a1b82859bc68b26fae965564fa",
    "9dc92f731aa43451aaccdaabbca220fa",
    "c5a3e789e449a8123509be5fd671b6b2",
)
CRIC_SPARSE = "3265df8f2ecb21f1688c33025e540df8"  # a field whose deposit covers no 300 px tile to 50 %
HERLEV_CELLS = 643  # shared/data/herlev/train: 410 abnormal, 233 normal


def linked(files, folder: Path, keep_parent: bool = False) -> Path:
    """A folder of symlinks to some shared files (never copies); keep_parent keeps each file's class folder."""
    for path in files:
        link = folder / (f"{path.parent.name}/{path.name}" if keep_parent else path.name)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return folder


def cric_fields(shared_data, folder: Path, names) -> Path:
    return linked([shared_data / "cric" / "dataset" / f"{name}.png" for name in names], folder)


def herlev_subset(shared_data, folder: Path) -> Path:
    """Every third Herlev cell (215 of 643) in its class folder: the whole set's code paths in a third of the time."""
    return linked(sorted((shared_data / "herlev" / "train").glob("*/*.BMP"))[::3], folder, keep_parent=True)


def cric_config(**overrides):
    cfg = preset(TILE_PRESETS, "paper", tile_size=256, default_mpp=0.25, workers=2, **overrides)
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


def test_herlev_cells_one_tile_per_crop_grouped_by_source_image(shared_data, tmp_path):
    assert len(list((shared_data / "herlev" / "train").glob("*/*.BMP"))) == HERLEV_CELLS
    cfg = preset(TILE_PRESETS, "tiny", tile_size=128, workers=2, balance=())  # every crop: no partition drawn 1:1
    manifest = make_tiles("cells", herlev_subset(shared_data, tmp_path / "herlev"), tmp_path / "h", cfg)
    assert len(manifest) == len(range(0, HERLEV_CELLS, 3))
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    normal = manifest["tile_id"].str.contains("normal_")
    assert (manifest.loc[normal, "label"] == "negative").all() and (manifest.loc[~normal, "label"] == "positive").all()
    sizes = {Image.open(p).size for p in manifest["path"].sample(20, random_state=0)}
    assert sizes == {(128, 128)}


def test_a_small_collection_takes_its_own_partition_shares(shared_data, tmp_path):
    from cyto_ssrl.cli import parse_partitions

    shares = parse_partitions("ssrl=0.5, downstream=0.3, evaluation=0.2")
    cfg = preset(TILE_PRESETS, "tiny", workers=2, partitions=shares, balance=())
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    counts = make_tiles("cells", folder, tmp_path / "h", cfg)["partition"].value_counts()
    assert counts.to_dict() == pytest.approx({"ssrl": 107.5, "downstream": 64.5, "evaluation": 43}, abs=4)
    for bad, message in [
        ("ssrl=0.5,evaluaton=0.5", "partition 'evaluaton' is not one of ssrl, downstream"),
        ("ssrl=half", "partition share 'ssrl=half' is not a number"),
    ]:
        with pytest.raises(CytoError, match=message):
            parse_partitions(bad)


def test_sipakmed_leaves_metaplastic_out_and_pads_without_stretching(shared_data, tmp_path):
    cfg = preset(TILE_PRESETS, "paper", tile_size=512, workers=1, partitions={"ssrl": 1, "downstream": 1}, balance=())
    manifest = make_tiles("cells", shared_data / "sipakmed", tmp_path / "s", cfg)
    assert len(manifest) == 20 and not manifest["tile_id"].str.contains("Metaplastic").any()
    assert manifest.groupby("patient_id")["partition"].nunique().max() == 1
    row = manifest[manifest["tile_id"].str.contains("Dyskeratotic")].iloc[0]
    crop = np.asarray(Image.open(row.source_path).convert("RGB")).astype(int)
    tile = np.asarray(Image.open(row.path)).astype(int)
    top, left = (512 - crop.shape[0]) // 2, (512 - crop.shape[1]) // 2
    centre = tile[top : top + crop.shape[0], left : left + crop.shape[1]]
    assert np.abs(centre - crop).mean() < 6  # the crop at its own size (JPEG noise only), not resized


def test_tiles_run_is_tracked(synthetic_default):
    uri, run_id, manifest_path = synthetic_default
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tile_size"] == "64" and run.data.params["source"] == "synthetic"
    assert run.data.params["balance"] == "('downstream', 'evaluation')" and run.data.params["strict"] == "False"
    manifest = pd.read_parquet(manifest_path)
    metrics = run.data.metrics
    assert metrics["n_tiles"] == len(manifest) and metrics["slides_skipped"] == 0
    assert metrics["n_ssrl_dropped"] == 0 and min(metrics["n_downstream_dropped"], metrics["n_evaluation_dropped"]) > 0
    assert metrics["n_downstream_kept"] == (manifest["partition"] == "downstream").sum()
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tiles-synthetic"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {
        "manifest.parquet",
        "summary.md",
        "summary.csv",
        "summary_per_slide.csv",
        "summary_balance.csv",
        "skipped_slides.csv",
    } <= artifacts
    assert manifest.groupby("slide_id")["partition"].nunique().max() == 1
    summary = (manifest_path.parent / "summary.md").read_text()
    assert "0 slide(s) skipped" in summary and "| downstream  | True " in summary


def test_the_synthetic_default_serves_every_paper_budget_and_pool(synthetic_default):
    """With no parameters, tiles -> pretrain -> downstream runs the paper's five budgets and pools of 200 at 1:1 and
    1:100; downstream and evaluation are 1:1, of positive and negative tiles only, and ssrl keeps every tile."""
    manifest = pd.read_parquet(synthetic_default[2])
    counts = pd.crosstab(manifest["partition"], manifest["label"])
    for name in ("downstream", "evaluation"):
        assert set(manifest.loc[manifest["partition"] == name, "label"]) == {"positive", "negative"}, name
        assert counts.loc[name, "positive"] == counts.loc[name, "negative"], name
    assert counts.loc["evaluation", "positive"] >= 30
    assert counts.loc["ssrl", "ambiguous"] > 0  # ssrl is not balanced: its ambiguous tiles stay for the pools
    downstream = labelled_tiles(manifest, "downstream")
    for budget in (100, 50, 10, 5, 1):
        train, val = draw_budget(downstream, budget, resample=0, seed=0)
        assert (len(train), len(val)) == tuple(2 * n for n in budget_counts(len(downstream), budget)), budget
        assert budget != 100 or len(train) + len(val) == len(downstream)  # 100 % is the whole partition
    for r in (1, 100):
        pool = make_pool(manifest, r, 200, seed=0)
        assert len(pool) == 200 and (pool["label"] == "positive").sum() == round(200 / (r + 1)), r
    on_disk = {str(p) for p in (synthetic_default[2].parent / "tiles").rglob("*.jpg")}
    assert on_disk == set(manifest["path"])  # no tile a 1:1 draw dropped was cut


def test_balanced_partitions_are_drawn_1to1_before_any_tile_is_cut(shared_data, tmp_path):
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    cfg = preset(TILE_PRESETS, "tiny", workers=2)
    balanced = make_tiles("cells", folder, tmp_path / "balanced", cfg)
    natural = make_tiles("cells", folder, tmp_path / "natural", preset(TILE_PRESETS, "tiny", workers=2, balance=()))
    for name in ("downstream", "evaluation"):
        drawn, whole = (m[m["partition"] == name] for m in (balanced, natural))
        counts, available = drawn["label"].value_counts(), whole["label"].value_counts()
        assert set(counts.index) == {"positive", "negative"} and counts["positive"] == counts["negative"], name
        assert counts["positive"] == min(available["positive"], available["negative"]), name  # the minority, whole
        assert set(drawn["tile_id"]) < set(whole["tile_id"]), name
    ssrl = [set(m.loc[m["partition"] == "ssrl", "tile_id"]) for m in (balanced, natural)]
    assert ssrl[0] == ssrl[1]  # the split comes first; ssrl keeps every tile
    report = {row["partition"]: row for row in balanced.attrs["balance"]}
    assert report["ssrl"]["dropped"] == 0
    assert sum(row["dropped"] for row in report.values()) == len(natural) - len(balanced)
    on_disk = {str(p) for p in (tmp_path / "balanced" / "tiles").rglob("*.jpg")}
    assert on_disk == set(balanced["path"])  # a dropped tile was never cut
    again = make_tiles("cells", folder, tmp_path / "again", cfg)
    assert again.drop(columns="path").equals(balanced.drop(columns="path"))  # seeded


def test_ssrl_is_never_balanced(tmp_path):
    cfg = preset(TILE_PRESETS, "tiny", balance=("ssrl",))
    for refuse in (lambda: parse_balance("ssrl"), lambda: make_tiles("synthetic", None, tmp_path / "out", cfg)):
        with pytest.raises(CytoError, match="the ssrl partition cannot be balanced: pools are drawn from") as caught:
            refuse()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # refused before a slide is drawn
    assert parse_balance("") is None and parse_balance("none") == ()
    assert parse_balance(" downstream ") == ("downstream",)
    with pytest.raises(CytoError, match="balance: partition 'evaluaton' is not one of"):
        parse_balance("downstream,evaluaton")


# ------------------------------------------------------------------------------------------------ skipped slides


def cric_run(shared_data, folder: Path, output: Path, **overrides):
    """The tiny preset on CRIC fields as the README's command tiles them (0.25 um/px, 1376x1020 coordinates)."""
    return run_tiles(
        "slides",
        str(folder),
        str(output),
        "tiny",
        str(shared_data / "cric" / "classifications.csv"),
        default_mpp=0.25,
        csv=CsvAnnotationConfig(image_size=CRIC_SIZE),
        **overrides,
    )


def test_a_sparse_cric_field_is_skipped_and_listed_unless_strict(store, shared_data, tmp_path):
    folder = cric_fields(shared_data, tmp_path / "fields", (CRIC_SPARSE,) + CRIC_TEN[:3])
    run_id, manifest_path = cric_run(shared_data, folder, tmp_path / "out", partitions={"ssrl": 1})
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["slides_skipped"] == 1
    skipped = pd.read_csv(tmp_path / "out" / "skipped_slides.csv")
    assert skipped["slide_id"].tolist() == [CRIC_SPARSE]
    assert skipped["reason"].iloc[0].startswith("no tile of 300 level-0 px has 50% cell deposit")
    assert "skipped_slides.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert f"- {CRIC_SPARSE}: no tile of 300" in (tmp_path / "out" / "summary.md").read_text()
    manifest = pd.read_parquet(manifest_path)
    assert set(manifest["slide_id"]) == set(CRIC_TEN[:3]) and not (tmp_path / "out" / "tiles" / CRIC_SPARSE).exists()

    with pytest.raises(CytoError) as caught:
        cric_run(shared_data, folder, tmp_path / "strict", partitions={"ssrl": 1}, strict=True)
    assert str(caught.value) == (
        f"slide '{CRIC_SPARSE}': no tile of 300 level-0 px has 50% cell deposit; lower min_deposit or check the slide"
    )
    assert not (tmp_path / "strict" / "manifest.parquet").exists() and not (tmp_path / "strict" / "tiles").exists()
    with pytest.raises(CytoError, match=rf"no slide in .* gives a tile \(1 skipped\); the first, '{CRIC_SPARSE}': no"):
        cric_run(shared_data, cric_fields(shared_data, tmp_path / "sparse", (CRIC_SPARSE,)), tmp_path / "none")
    assert not (tmp_path / "none" / "manifest.parquet").exists() and not (tmp_path / "none" / "tiles").exists()


def test_an_unreadable_slide_among_good_ones_is_skipped_unless_strict(tmp_path, capsys):
    png = io.BytesIO()
    _field().save(png, format="PNG")
    folder = _slides_folder(
        tmp_path,
        {
            "a.png": _field(),
            "a.geojson": _geojson([(200, 200, "positive")]),
            "b.svs": "not a slide",
            "c.png": png.getvalue()[:1000],
            "d.png": _field(),
            "d.geojson": _geojson([(200, 200, "negative")]),
        },
    )
    cfg = preset(TILE_PRESETS, "paper", **SMALL)
    manifest = make_tiles("slides", folder, tmp_path / "out", cfg)
    assert set(manifest["slide_id"]) == {"a", "d"}
    reasons = {row["slide_id"]: row["reason"] for row in manifest.attrs["skipped_slides"]}
    assert reasons.keys() == {"b", "c"}
    assert "b.svs is not a slide or image OpenSlide can read" in reasons["b"]
    assert reasons["c"].endswith("c.png cannot be read (image file is truncated)")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipping slide")]
    assert warnings == [f"skipping slide 'b': {reasons['b']}", f"skipping slide 'c': {reasons['c']}"]
    with pytest.raises(CytoError, match="^slide 'b': .*b.svs is not a slide") as caught:
        make_tiles("slides", folder, tmp_path / "strict", preset(TILE_PRESETS, "paper", **SMALL, strict=True))
    assert "\n" not in str(caught.value) and not (tmp_path / "strict").exists()


@pytest.mark.slow
def test_all_fifty_cric_fields_tile_with_the_sparse_one_skipped(shared_data, tmp_path):
    """The README's CRIC command on every field of shared/data: it used to stop at the sparse field."""
    cfg = preset(TILE_PRESETS, "tiny", default_mpp=0.25)
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


# ------------------------------------------------------------------------------------------------ bad input


def _slides_folder(tmp_path, files: dict[str, object]):
    folder = tmp_path / "in"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(folder / name)
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


def _field(colour=(240, 240, 240), cell=True) -> Image.Image:
    image = Image.new("RGB", (400, 400), colour)
    if cell:
        ImageDraw.Draw(image).ellipse([50, 50, 350, 350], fill=(150, 90, 160))
    return image


def _geojson(cells):
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [x, y]},
            "properties": {"classification": {"name": name}},
        }
        for x, y, name in cells
    ]
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
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "tiles",
        "--env-manager",
        "local",
        "-P",
        "source=cells",
        "-P",
        f"input={folder}",
        "-P",
        f"output={out}",
        "-P",
        "balance=none",
    ]
    # `mlflow run --env-manager local` runs `python` from PATH: the interpreter running these tests.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_parquet(out / "manifest.parquet")) == len(range(0, HERLEV_CELLS, 3))  # balance=none: every cell
    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs["status"]) == ["FINISHED"] and runs["params.source"].iloc[0] == "cells"
    assert runs["params.balance"].iloc[0] == "none" and runs["metrics.slides_skipped"].iloc[0] == 0

    bad = subprocess.run(
        [sys.executable, "-m", "entrypoints.tiles", "--source", "slides", "--input", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"error: input folder {tmp_path / 'nope'} does not exist"
