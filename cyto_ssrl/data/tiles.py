"""Stage 1: slides (or cell crops) in, labelled tiles and a Parquet manifest out.

plan (slide_plan.py: worker processes over slides: mpp, deposit grid, labels) -> split by patient -> balance
(partitions drawn 1:1) -> cut (cutting.py: worker processes over tile batches) -> manifest. Tiles and manifest are
written into a new version folder, which replaces the previous pair in one rename only when every tile is written, so
a failed run leaves the previous output as it was.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cyto_ssrl.data.config import TileConfig
from cyto_ssrl.data.cutting import write_tiles
from cyto_ssrl.data.pseudonyms import key_path, pseudonymize
from cyto_ssrl.data.slide_plan import plan_slides
from cyto_ssrl.data.split import assign_partitions, balance_partitions, check_balance, check_classes
from cyto_ssrl.errors import CytoError


def make_tiles(
    source: str,
    input_dir: str | Path | None,
    output_dir: str | Path,
    cfg: TileConfig,
    annotations: str | Path | None = None,
) -> pd.DataFrame:
    """Run stage 1 and return the manifest (also written to output_dir/manifest.parquet).

    What the run left out rides along in the returned manifest's attrs (not in the file): `skipped_slides`, one
    record (SKIPPED_COLUMNS) per slide that gave no tile, and `balance`, tiles planned/kept/dropped per partition.
    """
    output_dir = Path(output_dir).resolve()
    check_balance(cfg.balance)
    if source == "synthetic":
        from cyto_ssrl.data.synthetic import generate_cohort

        input_dir = output_dir / "slides"
        generate_cohort(input_dir, cfg.synthetic, cfg.workers)
    if source in ("slides", "synthetic"):
        plan = plan_slides(_existing_dir(input_dir), cfg, annotations)
    elif source == "cells":
        from cyto_ssrl.data.cells import plan_cells

        plan = plan_cells(_existing_dir(input_dir), cfg)
    else:
        raise CytoError(f"unknown tile source {source!r}; choose slides, cells or synthetic")
    skipped = plan.attrs.pop("skipped_slides", [])  # popped: pandas would carry it into the manifest file
    plan["source"] = source
    plan = split_plan(plan, cfg)
    # Balanced partitions are drawn before any tile is cut: a tile they drop is never read or written.
    kept = balance_partitions(plan, cfg.balance, cfg.seed)
    if cfg.pseudonymize and source != "synthetic":
        # After the split and the draws, which therefore do not depend on the key: same slides and seed, same tiles.
        # Not the generated cohort: its names identify nobody, and pools and budgets (drawn in tile-id order) must be
        # the same on every clone.
        kept, skipped = pseudonymize(kept, skipped, key_path(cfg.pseudonym_key, output_dir))
    manifest = write_tiles(kept, output_dir, cfg)
    manifest.attrs.update(skipped_slides=skipped, balance=balance_report(plan, kept, cfg.balance))
    return manifest


def _existing_dir(path) -> Path:
    if path is None or not Path(path).is_dir():
        raise CytoError(f"input folder {path} does not exist")
    return Path(path)


def split_plan(plan: pd.DataFrame, cfg: TileConfig) -> pd.DataFrame:
    """Give every tile its patient's partition; patients are split before any tile is cut."""
    groups = plan.groupby("patient_id").agg(label=("label", _group_label), weight=("tile_id", "size"))
    partition = assign_partitions(groups.reset_index(names="group"), cfg.partitions, cfg.seed)
    plan = plan.assign(partition=plan["patient_id"].map(partition))
    check_classes(plan, cfg.partitions)
    return plan


def balance_report(planned: pd.DataFrame, kept: pd.DataFrame, balanced) -> list[dict]:
    """Per partition: balanced or not, tiles planned, kept and dropped (and the dropped ones by label)."""
    rows = []
    for name, tiles in planned.groupby("partition", sort=True):
        dropped = tiles.loc[~tiles.index.isin(kept.index), "label"].value_counts()
        rows.append(
            {
                "partition": name,
                "balanced_1to1": name in balanced,
                "planned": len(tiles),
                "kept": len(tiles) - int(dropped.sum()),
                "dropped": int(dropped.sum()),
                "dropped_labels": ", ".join(f"{label} {n}" for label, n in dropped.items()),
            }
        )
    return rows


def _group_label(tile_labels: pd.Series) -> str:
    """A patient counts as positive for the split when any of its planned tiles is: those are the scarce ones."""
    for label in ("positive", "negative"):
        if (tile_labels == label).any():
            return label
    return "unknown"


def summarize(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tiles per partition x label, and per slide."""
    by_partition = pd.crosstab(manifest["partition"], manifest["label"], margins=True, margins_name="total")
    per_slide = manifest.pivot_table(
        index=["slide_id", "patient_id", "partition", "slide_label"],
        columns="label",
        values="tile_id",
        aggfunc="count",
        fill_value=0,
    )
    return by_partition.reset_index(), per_slide.reset_index()
