"""Slides stage 1 cannot use: a sparse or unreadable one among good ones is skipped and listed (unless strict), and
bad input fails with one line and writes nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS, CsvAnnotationConfig
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages.tiles import run_tiles

from .helpers import CRIC_SIZE, CRIC_SPARSE, CRIC_TEN, _field, _slides_folder, cric_fields


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
    run_id, manifest_path = cric_run(shared_data, folder, tmp_path / "out", partitions={"ssrl": 1}, pseudonymize=False)
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
    cfg = preset(TILE_PRESETS, "paper", **SMALL, pseudonymize=False)
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
