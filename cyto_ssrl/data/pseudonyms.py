"""Pseudonymous slide and patient ids: nothing that names a patient leaves the slide files.

A hospital's slide names are accession numbers, sometimes a patient's name and birth date; slides.csv's patient
ids are record numbers. Every id that reaches the manifest, the tile files, the summaries and the tracking store is
instead a keyed hash of the real one (HMAC-SHA256): the same slide gets the same pseudonym in every run with the
same key, and without the key nobody can test a guessed name against it. The key and the table that maps each
pseudonym back to its file (for the people who hold the slides) stay in a private folder that is never logged.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import pandas as pd

from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import write_atomic

KEY_FILE = "pseudonym.key"
MAPPING_FILE = "pseudonyms.csv"  # written beside the key
PRIVATE_DIR = "private"  # the default home of both, inside the tiles output folder
PREFIXES = {"slide": "s", "patient": "p"}
HASH_CHARS = 12  # 48 bits: no two of a collection's slides share a pseudonym by chance
MAPPING_COLUMNS = ["pseudonym", "kind", "real_id", "file"]


def key_path(configured: str | None, output_dir: Path) -> Path:
    """The configured key file, else output_dir/private/pseudonym.key. Never the input folder by default: public
    data (or a read-only share) must not be written to."""
    return Path(configured) if configured else output_dir / PRIVATE_DIR / KEY_FILE


def load_key(path: Path) -> bytes:
    """The secret at `path`, created on first use (32 random bytes, readable by its owner only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise CytoError(f"pseudonym key {path} is shorter than 16 bytes; restore it or remove it") from None
        return key
    with os.fdopen(fd, "wb") as file:
        file.write(secrets.token_bytes(32))
    return path.read_bytes()


def pseudonym(key: bytes, kind: str, real_id: str) -> str:
    """`s-` (slide) or `p-` (patient) and 12 hex characters of HMAC-SHA256(key, kind:id)."""
    digest = hmac.new(key, f"{kind}:{real_id}".encode(), hashlib.sha256).hexdigest()
    return f"{PREFIXES[kind]}-{digest[:HASH_CHARS]}"


def pseudonymize(plan: pd.DataFrame, skipped: list[dict], key_file: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The plan and skipped-slide records with pseudonymous slide, patient and tile ids; the mapping back to the
    real ids and files is added to the table beside the key. Rows keep their index."""
    key = load_key(key_file)
    slides = {s: pseudonym(key, "slide", s) for s in sorted({*plan["slide_id"], *(r["slide_id"] for r in skipped)})}
    patients = {p: pseudonym(key, "patient", p) for p in sorted(set(plan["patient_id"]))}
    files = {**plan.groupby("slide_id")["source_path"].first().to_dict(), **{r["slide_id"]: r["path"] for r in skipped}}
    _write_mapping(key_file.parent / MAPPING_FILE, slides, patients, files)
    tile_ids = _tile_ids(plan, slides)
    plan = plan.assign(slide_id=plan["slide_id"].map(slides), patient_id=plan["patient_id"].map(patients))
    plan = plan.assign(tile_id=tile_ids)
    return plan, [_pseudonymous_skip(record, slides[record["slide_id"]]) for record in skipped]


def _tile_ids(plan: pd.DataFrame, slides: dict[str, str]) -> pd.Series:
    """A slide's tiles are named by its pseudonym and their level-0 position (which says nothing about a patient);
    a source image's cell crops (all at 0, 0) by its pseudonym and their rank in it."""
    slide = plan["slide_id"].map(slides)
    if (plan["source"] == "cells").all():
        rank = plan.groupby("slide_id")["tile_id"].rank(method="first").astype(int)
        return slide + "_c" + rank.astype(str)
    return slide + "_x" + plan["x"].astype(str) + "_y" + plan["y"].astype(str)


def _pseudonymous_skip(record: dict, slide: str) -> dict:
    """A skipped slide as the artifacts show it: no file path, and the reason with the file's name replaced."""
    path = Path(record["path"])
    reason = record["reason"]
    for name in (str(path), path.name, path.stem):
        reason = reason.replace(name, slide)
    return {**record, "slide_id": slide, "path": "", "reason": reason}


def _write_mapping(path: Path, slides: dict, patients: dict, files: dict) -> None:
    """pseudonym, kind, real id, file: merged with what earlier runs with the same key wrote."""
    rows = {}
    if path.exists():
        with path.open(newline="") as file:
            rows = {(r["pseudonym"], r["kind"]): r for r in csv.DictReader(file)}
    for real, alias in slides.items():
        rows[(alias, "slide")] = dict(pseudonym=alias, kind="slide", real_id=real, file=str(files[real]))
    for real, alias in patients.items():
        rows[(alias, "patient")] = dict(pseudonym=alias, kind="patient", real_id=real, file="")

    def write(tmp: Path) -> None:  # into write_atomic's temporary file, which only its owner can read
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=MAPPING_COLUMNS)
            writer.writeheader()
            writer.writerows(rows[k] for k in sorted(rows))

    write_atomic(path, write)
