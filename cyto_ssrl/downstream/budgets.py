"""Label budgets: b % of the downstream partition, drawn 1:1 positive:negative and split train:val 4:1 per class.

The paper's 40,000 downstream tiles give budgets of 40,000 / 20,000 / 4,000 / 2,000 / 400 tiles at 100 / 50 / 10 /
5 / 1 %. Each (seed, budget, resample) draws its own tiles, so resamples of one budget differ and reruns repeat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cyto_ssrl.errors import CytoError
from cyto_ssrl.names import budget_label

VAL_SHARE = 5  # one in five tiles of each class validates (train:val = 4:1)


def parse_budgets(text: str) -> tuple[float, ...]:
    """'100,50,10,5,1' -> (100.0, 50.0, 10.0, 5.0, 1.0); each must lie in (0, 100]."""
    try:
        budgets = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise CytoError(f"budgets {text!r} are not comma-separated percentages, e.g. 100,50,10,5,1") from None
    if not budgets:
        raise CytoError("no budget given; write percentages such as 100,50,10,5,1")
    for budget in budgets:
        check_budget(budget)
    return budgets


def check_budget(budget: float) -> None:
    if not 0 < budget <= 100:
        raise CytoError(f"budget {budget_label(budget)} % is not in (0, 100]")


def budget_counts(n_tiles: int, budget: float) -> tuple[int, int]:
    """(train, val) tiles per class for b % of `n_tiles`.

    The budget's tile count is rounded to the nearest whole number, then down to even so that it splits 1:1; a
    fifth of each class (at least one tile) validates.
    """
    check_budget(budget)
    per_class = int(n_tiles * budget / 100 + 0.5) // 2
    val = max(1, round(per_class / VAL_SHARE))
    if per_class - val < 1:
        raise CytoError(
            f"budget {budget_label(budget)} % of {n_tiles} tiles is {2 * per_class} tiles; a 1:1 "
            "train/val split needs at least 4"
        )
    return per_class - val, val


def budget_seed(seed: int, budget: float, resample: int) -> int:
    """One integer per (seed, budget, resample) for drawing the tiles and for training on them."""
    return int(np.random.SeedSequence([seed, round(budget * 1000), resample]).generate_state(1)[0])


def draw_budget(tiles: pd.DataFrame, budget: float, resample: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows of `tiles` (labelled with y: 1 positive, 0 negative), 1:1 in both; the index is kept.

    Infeasible budgets (too few tiles of a class) are a one-line error naming wanted and available counts.
    """
    n_train, n_val = budget_counts(len(tiles), budget)
    wanted = n_train + n_val
    available = {label: int((tiles["y"] == label).sum()) for label in (1, 0)}
    if min(available.values()) < wanted:
        raise CytoError(
            f"budget {budget_label(budget)} % ({2 * wanted} tiles at 1:1) needs {wanted} positive and "
            f"{wanted} negative downstream tiles; the partition has {available[1]} and "
            f"{available[0]}"
        )
    rng = np.random.default_rng(budget_seed(seed, budget, resample))
    train, val = [], []
    for label in (1, 0):
        members = tiles[tiles["y"] == label].sort_values("tile_id")
        chosen = members.iloc[rng.permutation(len(members))[:wanted]]
        val.append(chosen.iloc[:n_val])
        train.append(chosen.iloc[n_val:])
    return pd.concat(train).sort_index(), pd.concat(val).sort_index()
