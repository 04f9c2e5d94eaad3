"""Nothing identifying a patient leaves the slide files: a real Aperio slide (with its label and macro images) under
a hospital-style name, through tiles -> pools -> pre-training -> downstream, and then the whole store searched."""

from __future__ import annotations

import shutil

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from cyto_ssrl.data.pseudonyms import KEY_FILE, MAPPING_FILE, PRIVATE_DIR
from cyto_ssrl.stages.downstream import run_downstream
from cyto_ssrl.stages.pretrain import run_pretrain
from cyto_ssrl.stages.tiles import run_tiles

# Three positive and three negative patients, so that every partition gets a slide of each class.
NAMES = [f"DOEHERTY_JANELLE_1969-03-0{k + 1}_S26-1234{k}" for k in range(6)]
PATIENTS = [f"MRN-4471-09{k}" for k in range(6)]
IDENTIFYING = ["doeherty", "janelle", "1969-03-0", "s26-1234", "mrn-4471"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@pytest.mark.slow
def test_no_name_patient_id_or_label_image_reaches_the_store(shared_data, store, tmp_path):
    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in NAMES:
        shutil.copy(cmu, slides / f"{name}.svs")
    labels = ["positive", "negative"] * 3
    pd.DataFrame({"slide_id": NAMES, "patient_id": PATIENTS, "label": labels}).to_csv(
        slides / "slides.csv", index=False
    )
    (slides / "DOEHERTY_JANELLE_1969-03-07_S26-12346.svs").write_text("not a slide")  # skipped, and listed

    slide_mpp = {NAMES[0]: 0.499}  # a per-slide override: a param of the run
    _, manifest_path = run_tiles(
        "slides", str(slides), "tiles", "tiny", max_tiles_per_slide=24, workers=1, slide_mpp=slide_mpp
    )
    manifest = pd.read_parquet(manifest_path)
    assert set(manifest["partition"]) == {"ssrl", "downstream", "evaluation"}
    assert manifest["slide_id"].str.fullmatch(r"s-[0-9a-f]{12}").all()
    assert manifest["patient_id"].str.fullmatch(r"p-[0-9a-f]{12}").all() and manifest["patient_id"].nunique() == 6
    _, uri = run_pretrain(
        "mae", "1:1", manifest=str(manifest_path), pool_size=32, epochs=1, batch_size=16, num_workers=0
    )
    run_downstream(uri, "linear", budgets=(50,), resamples=1)
    run_downstream(uri, "representation")  # per-tile tables and a t-SNE

    # The private folder maps each pseudonym back to its slide, for whoever holds the slides.
    private = tmp_path / "tiles" / PRIVATE_DIR
    assert (private / KEY_FILE).stat().st_mode & 0o077 == 0
    mapping = pd.read_csv(private / MAPPING_FILE)
    slide_rows = mapping[mapping["kind"] == "slide"].set_index("pseudonym")
    assert set(slide_rows.loc[manifest["slide_id"].unique(), "real_id"]) == set(NAMES)
    skipped = pd.read_csv(tmp_path / "tiles" / "skipped_slides.csv")
    assert slide_rows.loc[skipped["slide_id"], "real_id"].tolist() == ["DOEHERTY_JANELLE_1969-03-07_S26-12346"]

    searched = [p for p in tmp_path.rglob("*") if p.is_file() and slides not in p.parents and private not in p.parents]
    assert any(p.name == "mlruns.db" for p in searched) and any("artifacts" in p.parts for p in searched)
    label = np.asarray(openslide.OpenSlide(cmu).associated_images["label"].convert("RGB"))
    row = label[int(np.argmax(label.reshape(label.shape[0], -1).std(axis=1)))].tobytes()  # its most varied row
    for path in searched:
        data = path.read_bytes().lower()
        for part in IDENTIFYING:
            assert part.encode() not in str(path).lower().encode(), (part, path)
            assert part.encode() not in data, (part, path)
        assert row not in data, path
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as image:
                assert image.size != label.shape[1::-1] or not _similar(np.asarray(image.convert("RGB")), label), path


def _similar(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).mean() < 10
