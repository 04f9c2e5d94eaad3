"""Holm's step-down correction against a hand-worked example, and the paired test of each pre-trained version
against the random-init baseline on a small results frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t
from scipy.stats import ttest_rel

from analysis.stats import baseline_gains, holm


def test_holm_multiplies_the_ith_smallest_by_m_minus_i_keeps_order_and_nan():
    # m = 4 tests (NaN is no test): 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (never below the step before), in the input's order.
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert adjusted[[0, 1, 2, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[3])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]).size == 0 and np.isnan(holm([np.nan])).all()


def _rows(method: str, ratio: str, r: int, pretrain_seed: str, accs, mode="linear", budget=10.0) -> list[dict]:
    return [
        {
            "method": method,
            "backbone": "vit_tiny",
            "ratio": ratio,
            "ratio_r": r,
            "mode": mode,
            "budget": budget,
            "resample": resample,
            "seed": 0,
            "pretrain_seed": pretrain_seed,
            "acc": acc,
        }
        for resample, acc in enumerate(accs)
    ]


def test_baseline_gain_pairs_each_version_with_the_baseline_on_the_same_draws():
    balanced, imbalanced, baseline = [0.80, 0.84, 0.79, 0.83], [0.70, 0.75, 0.72, 0.71], [0.60, 0.66, 0.61, 0.63]
    results = pd.DataFrame(
        _rows("mae", "1:1", 1, "0", balanced)
        + _rows("mae", "1:100", 100, "0", imbalanced)
        # the baseline has no pre-training seed; its resample 3 is missing, so only 3 draws pair
        + _rows("external", "external", 0, "", baseline[:3])
        + _rows("mae", "1:1", 1, "0", balanced, mode="finetune")  # no baseline for fine-tuning: no row
    )
    gains = baseline_gains(results, "acc")
    assert gains[["method", "mode", "ratio", "n_pairs"]].values.tolist() == [
        ["mae", "linear", "1:1", 3],
        ["mae", "linear", "1:100", 3],
    ]
    for row, own in zip(gains.itertuples(), (balanced, imbalanced), strict=True):
        expected_p = ttest_rel(own[:3], baseline[:3]).pvalue
        assert row.gain_pp == pytest.approx(100 * (np.mean(own[:3]) - np.mean(baseline[:3])))
        assert row.p_value == pytest.approx(expected_p)
        differences = 100 * (np.array(own[:3]) - np.array(baseline[:3]))
        assert row.ci95_pp == pytest.approx(student_t.ppf(0.975, 2) * differences.std(ddof=1) / np.sqrt(3))
    assert list(gains["p_holm"]) == pytest.approx(list(holm(gains["p_value"])))
    assert list(gains["significant"]) == list(gains["p_holm"] < 0.05)
    assert baseline_gains(results[results["method"] != "external"], "acc").empty
