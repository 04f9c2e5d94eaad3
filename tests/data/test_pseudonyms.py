"""Pseudonymous ids: keyed, stable under one key, the same split as the real names, skipped slides without their
file names, and only allow-listed slide properties read."""

from __future__ import annotations

import pandas as pd
import pytest

from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS
from cyto_ssrl.data.pseudonyms import MAPPING_FILE, PRIVATE_DIR, load_key, pseudonym
from cyto_ssrl.data.slides import ALLOWED_PROPERTIES, open_slide, slide_properties
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.errors import CytoError

from .helpers import _field, _slides_folder

SMALL = dict(tile_size=64, target_mpp=1.0, default_mpp=1.0, workers=1, balance=())
# Slides 0 and 2 (both positive) are one patient's: three positive patients and four negative ones.
PATIENTS = ["MRN-0", "MRN-1", "MRN-0", "MRN-3", "MRN-4", "MRN-5", "MRN-6", "MRN-7"]


def test_a_pseudonym_is_a_keyed_hash(tmp_path):
    key = load_key(tmp_path / "k" / "key")
    assert (tmp_path / "k" / "key").stat().st_mode & 0o777 == 0o600 and load_key(tmp_path / "k" / "key") == key
    assert pseudonym(key, "slide", "DOE_JANE") == pseudonym(key, "slide", "DOE_JANE")
    assert pseudonym(key, "slide", "DOE_JANE").startswith("s-") and pseudonym(key, "patient", "X").startswith("p-")
    assert pseudonym(key, "slide", "X")[2:] != pseudonym(key, "patient", "X")[2:]
    assert pseudonym(load_key(tmp_path / "other"), "slide", "DOE_JANE") != pseudonym(key, "slide", "DOE_JANE")
    (tmp_path / "short").write_bytes(b"123")
    with pytest.raises(CytoError, match="shorter than 16 bytes"):
        load_key(tmp_path / "short")


def test_slides_are_named_by_pseudonym_with_the_split_of_their_real_names(tmp_path, capsys):
    files = {f"DOE_{k}.png": _field() for k in range(8)}
    folder = _slides_folder(tmp_path, {**files, "DOE_broken.svs": "not a slide"})
    slides = [name.removesuffix(".png") for name in files]
    labels = ["positive", "negative"] * 4
    pd.DataFrame({"slide_id": slides, "patient_id": PATIENTS, "label": labels}).to_csv(
        folder / "slides.csv", index=False
    )
    real = make_tiles("slides", folder, tmp_path / "real", preset(TILE_PRESETS, "paper", **SMALL, pseudonymize=False))
    hidden = make_tiles("slides", folder, tmp_path / "out", preset(TILE_PRESETS, "paper", **SMALL))
    assert "skipping slide 'DOE_broken'" in capsys.readouterr().err  # the console is local: it names the file

    mapping = pd.read_csv(tmp_path / "out" / PRIVATE_DIR / MAPPING_FILE).set_index("pseudonym")
    assert mapping.loc[hidden["slide_id"], "kind"].eq("slide").all()
    assert mapping.loc[hidden["patient_id"], "kind"].eq("patient").all()
    assert hidden["patient_id"].nunique() == 7 and not hidden["tile_id"].str.contains("DOE").any()
    assert not hidden["path"].str.contains("DOE").any() and "source_path" not in hidden.columns
    # The split and the tiles are made on the real ids, before any pseudonym: the key changes names only.
    by_real = hidden.assign(slide_id=mapping.loc[hidden["slide_id"], "real_id"].to_numpy())
    assert (by_real.groupby("slide_id")["partition"].first() == real.groupby("slide_id")["partition"].first()).all()
    tiles = {tuple(t) for t in by_real[["slide_id", "partition", "x", "y"]].to_numpy()}
    assert tiles == {tuple(t) for t in real[["slide_id", "partition", "x", "y"]].to_numpy()}

    (skipped,) = hidden.attrs["skipped_slides"]
    assert skipped["slide_id"] == mapping.index[mapping["real_id"] == "DOE_broken"].item()
    assert skipped["path"] == "" and "DOE" not in skipped["reason"] and skipped["slide_id"] in skipped["reason"]
    again = make_tiles("slides", folder, tmp_path / "out", preset(TILE_PRESETS, "paper", **SMALL))
    assert again["tile_id"].tolist() == hidden["tile_id"].tolist()  # the same key: the same names


def test_only_allow_listed_slide_properties_are_read(shared_data):
    slide = open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    assert {"aperio.Filename", "aperio.User", "aperio.Date"} <= set(slide.properties)  # what it must not read
    properties = slide_properties(slide)
    assert set(properties) == set(ALLOWED_PROPERTIES) and properties["openslide.mpp-x"] == "0.499"
