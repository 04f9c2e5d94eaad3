"""How much each metric drops from the balanced pool (1:1) to 1:r, and how much each pre-trained backbone gains
over the random-init (external) baseline, each with a paired t-test over resamplings and Holm's correction.

Runs of two ratios pair up when they were trained on the same labelled budget draw (same seed and resample, and
the same pre-training seed when one is tagged), so the draw's own variance cancels out of the difference. The
baseline has no pre-training seed: it pairs with a pre-trained backbone on the draw alone (seed and resample).
A study asks many questions at once (every method x mode x budget x ratio), so each family of tests is corrected
with Holm's step-down method: `significant` reads the adjusted p-value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from scipy.stats import ttest_rel

from analysis.query import EXTERNAL, PAIR_KEYS, pretrained, sort_rows
from cyto_ssrl.data.pools import parse_ratio, ratio_label
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
    "ci95_pp",
    "p_value",
    "p_holm",
    "significant",
    "note",
]
# The draw a baseline run shares with a pre-trained one: PAIR_KEYS without pretrain_seed, which the baseline lacks.
DRAW_KEYS = tuple(k for k in PAIR_KEYS if k != "pretrain_seed")
BASELINE_COLUMNS = [
    "method",
    "backbone",
    "mode",
    "budget",
    "ratio",
    "n_pairs",
    "pretrained_mean_pct",
    "baseline_mean_pct",
    "gain_pp",
    "ci95_pp",
    "p_value",
    "p_holm",
    "significant",
    "note",
]


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest of m is multiplied by m - i (i from 0), kept monotone
    in that order and capped at 1. NaN (a test that could not be made) stays NaN and does not count in m."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    scaled = p[order] * (m - np.arange(m))
    # Step-down: a hypothesis is rejected only if every smaller p-value was, so the adjusted values never fall.
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def _corrected(tests: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """`p_holm` over the whole family of `tests`, and `significant` read from it."""
    p_holm = holm(tests["p_value"]) if len(tests) else np.array([])
    return tests.assign(p_holm=p_holm, significant=p_holm < alpha)


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
    return sort_rows(_corrected(pd.DataFrame(rows, columns=COLUMNS), alpha))


def baseline_gains(results: pd.DataFrame, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per method x backbone x mode x budget x ratio: the gain (percentage points) of the pre-trained
    backbone over its backbone's external baseline on the same budget draws, a paired t-test and Holm's p over
    all of them. Empty when the study has no baseline."""
    panel = ["backbone", "mode", "budget"]
    draws = [*panel, *DRAW_KEYS]
    baseline = results[results["method"] == EXTERNAL].groupby(draws)[metric].mean().mul(100).rename("baseline")
    own = pretrained(results).groupby(["method", "ratio_r", *draws])[metric].mean().mul(100).rename("pretrained")
    joined = own.reset_index().merge(baseline.reset_index(), on=draws)
    rows = []
    for (method, r, backbone, mode, budget), pairs in joined.groupby(["method", "ratio_r", *panel]):
        test = paired_test(pairs["pretrained"], pairs["baseline"], alpha)
        rows.append(
            {
                "method": method,
                "backbone": backbone,
                "mode": mode,
                "budget": budget,
                "ratio": ratio_label(r),
                "n_pairs": test["n_pairs"],
                "pretrained_mean_pct": test["reference_mean_pct"],
                "baseline_mean_pct": test["ratio_mean_pct"],
                "gain_pp": test["drop_pp"],
                "ci95_pp": test["ci95_pp"],
                "p_value": test["p_value"],
                "note": test["note"],
            }
        )
    table = pd.DataFrame(rows, columns=[c for c in BASELINE_COLUMNS if c not in ("p_holm", "significant")])
    table = _corrected(table, alpha)[BASELINE_COLUMNS]
    order = table.assign(ratio_r=table["ratio"].map(parse_ratio)) if len(table) else table.assign(ratio_r=0)
    return sort_rows(order.sort_values("ratio_r", kind="stable")).drop(columns="ratio_r")


def paired_test(reference: pd.Series, other: pd.Series, alpha: float) -> dict:
    """Mean drop (reference - other, in percentage points), the half-width of its 95 % confidence interval (how
    large a difference these pairs can resolve: a drop inside it is not told apart from none, before any
    multiple-comparison correction) and a two-sided paired t-test."""
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
        "ci95_pp": _ci_half_width(difference),
        "p_value": p_value,
        "significant": bool(p_value < alpha),
        "note": note,
    }


def _ci_half_width(difference: pd.Series) -> float:
    n = len(difference)
    if n < 2:
        return np.nan
    return float(student_t.ppf(0.975, n - 1) * difference.std(ddof=1) / np.sqrt(n))


def _reference_note(reference_r: int) -> str:
    return "" if reference_r == 1 else f"1:1 not evaluated: reference is {ratio_label(reference_r)}"


def markdown_drops(tests: pd.DataFrame) -> pd.DataFrame:
    """Rounded for reading (drop or baseline tables): means and differences to 2 decimals, p-values to 3
    significant digits."""
    means = [c for c in tests if c.endswith("_pct") or c.endswith("_pp")]
    rounded = tests.round(dict.fromkeys(means, 2)).assign(budget=tests["budget"].map(budget_label))
    for column in ("p_value", "p_holm"):
        rounded[column] = [f"{p:.3g}" if pd.notna(p) else "—" for p in tests[column]]
    return rounded.rename(columns={"budget": "budget (%)"})
