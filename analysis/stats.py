"""How much each metric drops from the balanced pool (1:1) to 1:r, with a paired t-test over resamplings.

Runs of two ratios pair up when they were trained on the same labelled budget draw (same seed and resample, and
the same pre-training seed when one is tagged), so the draw's own variance cancels out of the difference.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

from analysis.query import PAIR_KEYS, pretrained, sort_rows
from cyto_ssrl.data.pools import ratio_label
from cyto_ssrl.downstream.budgets import budget_label

ALPHA = 0.05
MIN_PAIRS = 3  # below this a t-test's p-value means nothing
COLUMNS = [
    "method",
    "backbone",
    "mode",
    "budget",
    "reference",
    "ratio",
    "n_pairs",
    "reference_mean_pct",
    "ratio_mean_pct",
    "drop_pp",
    "p_value",
    "significant",
    "note",
]


def paired(first: pd.DataFrame, second: pd.DataFrame, metric: str, keys=PAIR_KEYS) -> pd.DataFrame:
    """Columns 'first' and 'second': `metric` in % of the runs both sides share `keys` with, one row per pair.

    Several runs on one side with the same keys (e.g. two model versions without a pretrain_seed tag) are averaged
    first, so every pair counts once.
    """
    keys = list(keys)
    sides = [side.groupby(keys)[metric].mean().mul(100) for side in (first, second)]
    return pd.concat(sides, axis=1, keys=["first", "second"], join="inner").dropna()


def drops(results: pd.DataFrame, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per method x backbone x mode x budget and ratio r above the reference (1:1, else the smallest r)."""
    panel = ["method", "backbone", "mode", "budget"]
    # One value per panel x budget draw x ratio (the mean of runs sharing them, as `paired` takes it), ratios as
    # columns: a pair is a row with both columns filled. One pass over the runs, however many pairs.
    table = pretrained(results).groupby([*panel, *PAIR_KEYS, "ratio_r"])[metric].mean().mul(100).unstack("ratio_r")
    rows = []
    for (method, backbone, mode, budget), values in table.groupby(level=panel):
        ratios = [r for r in sorted(values.columns) if values[r].notna().any()]
        for r in ratios[1:]:
            pairs = values[[ratios[0], r]].dropna()
            test = paired_test(pairs[ratios[0]], pairs[r], alpha)
            note = "; ".join(filter(None, [_reference_note(ratios[0]), test.pop("note")]))
            rows.append(
                {
                    "method": method,
                    "backbone": backbone,
                    "mode": mode,
                    "budget": budget,
                    "reference": ratio_label(ratios[0]),
                    "ratio": ratio_label(r),
                    **test,
                    "note": note,
                }
            )
    return sort_rows(pd.DataFrame(rows, columns=COLUMNS))


def paired_test(reference: pd.Series, other: pd.Series, alpha: float) -> dict:
    """Mean drop (reference - other, in percentage points) and a two-sided paired t-test."""
    n = len(reference)
    difference = reference - other
    note = ""
    if n < MIN_PAIRS:
        p_value, note = np.nan, f"{n} pairs (< {MIN_PAIRS}): no p-value"
    else:
        with warnings.catch_warnings():  # identical pairs: scipy warns and returns NaN, which the note explains
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(ttest_rel(reference, other).pvalue)
        if np.isnan(p_value):
            note = "the pairs do not differ: no p-value"
    return {
        "n_pairs": n,
        "reference_mean_pct": reference.mean(),
        "ratio_mean_pct": other.mean(),
        "drop_pp": difference.mean(),
        "p_value": p_value,
        "significant": bool(p_value < alpha),
        "note": note,
    }


def _reference_note(reference_r: int) -> str:
    return "" if reference_r == 1 else f"1:1 not evaluated: reference is {ratio_label(reference_r)}"


def markdown_drops(drops: pd.DataFrame) -> pd.DataFrame:
    """Rounded for reading: means and drops to 2 decimals, p-values to 3 significant digits."""
    rounded = drops.round({"reference_mean_pct": 2, "ratio_mean_pct": 2, "drop_pp": 2})
    rounded = rounded.assign(
        budget=drops["budget"].map(budget_label), p_value=[f"{p:.3g}" if pd.notna(p) else "—" for p in drops["p_value"]]
    )
    return rounded.rename(columns={"budget": "budget (%)"})
