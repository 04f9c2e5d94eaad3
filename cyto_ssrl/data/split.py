"""Split first, tile second: whole patients (or cluster images) go to one partition before any tile is cut."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cyto_ssrl.errors import CytoError

LABELLED_STRATA = ("positive", "negative")


def assign_partitions(groups: pd.DataFrame, proportions: dict[str, float], seed: int) -> dict[str, str]:
    """Partition of every group, stratified by group label and balanced on expected tile counts.

    `groups` has columns group (patient or cluster id), label (positive/negative/unknown) and weight (expected
    tiles). When a labelled stratum has enough groups, every partition first gets one of them (pools, training
    and evaluation all need both classes); then the heaviest groups go, one by one, to the partition furthest
    below its share of the stratum's tiles. Seeded shuffling breaks ties between equal weights.
    """
    names = [name for name, share in proportions.items() if share > 0]
    if not names or any(share < 0 for share in proportions.values()):
        raise CytoError(f"partition proportions must be non-negative with at least one positive: {proportions}")
    total = sum(proportions[n] for n in names)
    shares = np.array([proportions[n] / total for n in names])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label, stratum in groups.groupby("label", sort=True):
        stratum = stratum.iloc[rng.permutation(len(stratum))].sort_values("weight", ascending=False, kind="stable")
        one_each = label in LABELLED_STRATA and len(stratum) >= len(names)
        assignment.update(_fill(stratum, names, shares, one_each))
    return assignment


def check_classes(tiles: pd.DataFrame, proportions: dict[str, float]) -> None:
    """Every partition must hold positive and negative tiles, or the split cannot serve the study."""
    for name in (n for n, share in proportions.items() if share > 0):
        labels = set(tiles.loc[tiles["partition"] == name, "label"])
        missing = [label for label in LABELLED_STRATA if label not in labels]
        if missing:
            raise CytoError(
                f"the split cannot be met: partition {name!r} gets no {' or '.join(missing)} tiles from "
                f"{tiles['patient_id'].nunique()} patients; add slides or change the partition proportions"
            )


def check_balance(names) -> None:
    if "ssrl" in names:
        raise CytoError(
            "the ssrl partition cannot be balanced: pools are drawn from all its tiles at each ratio "
            "(balance downstream and/or evaluation)"
        )


def balance_partitions(tiles: pd.DataFrame, names, seed: int) -> pd.DataFrame:
    """The tiles with each named partition drawn 1:1 positive:negative from its own tiles; other partitions whole.

    A balanced partition keeps its minority class and a seeded draw of as many tiles of its majority class; its
    ambiguous and unlabelled tiles go (downstream uses positive and negative tiles only). Each partition draws from
    its own random stream, so balancing one never changes the draw of another.
    """
    check_balance(names)
    keep = ~tiles["partition"].isin(list(names)).to_numpy()
    order = np.argsort(tiles["tile_id"].to_numpy(), kind="stable")  # rows by tile id: the plan's order does not count
    partition, label = tiles["partition"].to_numpy()[order], tiles["label"].to_numpy()[order]
    for name in names:
        if not (partition == name).any():  # not a partition of this split
            continue
        classes = [order[(partition == name) & (label == lab)] for lab in LABELLED_STRATA]
        n = min(len(rows) for rows in classes)
        if n == 0:
            missing = [lab for lab, rows in zip(LABELLED_STRATA, classes) if len(rows) == 0]
            raise CytoError(
                f"the split cannot be met: partition {name!r} gets no {' or '.join(missing)} tiles to "
                f"draw 1:1 from; add slides or change the partition proportions"
            )
        rng = np.random.default_rng([seed, *name.encode()])
        for rows in classes:
            keep[rows[rng.choice(len(rows), n, replace=False)]] = True
    return tiles[keep]


def _fill(stratum: pd.DataFrame, names: list[str], shares: np.ndarray, one_each: bool) -> dict[str, str]:
    target = shares * stratum["weight"].sum()
    filled = np.zeros(len(names))
    out: dict[str, str] = {}
    rows = list(stratum.itertuples(index=False))
    if one_each:
        # The smallest partitions first take the smallest groups, so a 5 % partition does not swallow a big slide.
        for k in np.argsort(shares):
            row = rows.pop()
            out[row.group] = names[k]
            filled[k] += row.weight
    for row in rows:
        k = int(np.argmax(target - filled))
        out[row.group] = names[k]
        filled[k] += row.weight
    return out
