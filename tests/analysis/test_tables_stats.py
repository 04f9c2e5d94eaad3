"""The paper's tables (mean and std over resamplings) and statistics (paired drops from the balanced pool)."""

from __future__ import annotations

import pytest
from scipy.stats import ttest_rel

from analysis.query import downstream_results
from analysis.stats import drops, holm
from analysis.tables import markdown_table, numeric_table, summary

from .helpers import simclr_linear_b10_at_1_100, values


def test_table_cells_are_mean_and_std_over_resamplings_in_percent(study):
    table = markdown_table(summary(downstream_results("s1"), "acc"))
    assert list(table.columns) == ["method", "backbone", "mode", "budget (%)", "1:1", "1:10", "1:100", "external"]
    assert table[["method", "mode", "budget (%)"]].values.tolist()[:4] == [
        ["mae", "linear", "100"],
        ["mae", "linear", "10"],
        ["mae", "finetune", "100"],
        ["mae", "finetune", "10"],
    ]
    row = table[(table["method"] == "mae") & (table["mode"] == "finetune") & (table["budget (%)"] == "10")].iloc[0]
    for column, method, r in (("1:10", "mae", 10), ("external", "external", 0)):
        expected = values("acc", method, "finetune", 10.0, r) * 100
        assert row[column] == f"{expected.mean():.1f} ± {expected.std(ddof=1):.1f}"
    assert (table.loc[table["method"] == "simclr", "external"] == "—").all()  # resnet18 has no baseline
    numeric = numeric_table(summary(downstream_results("s1"), "sp"))
    mae_linear = numeric[(numeric["method"] == "mae") & (numeric["mode"] == "linear") & (numeric["budget"] == 100)]
    expected = values("sp", "mae", "linear", 100.0, 100).mean() * 100
    assert mae_linear["1:100 mean"].item() == pytest.approx(expected, abs=1e-3)  # rounded to 3 decimals


def test_drop_from_balanced_pool_and_p_value_match_a_paired_t_test(study):
    stats = drops(downstream_results("s1"), "f1")
    assert len(stats) == 2 * 2 * 2 * 2  # method x mode x budget x (1:10, 1:100)
    row = simclr_linear_b10_at_1_100(stats)
    balanced, imbalanced = values("f1", "simclr", "linear", 10.0, 1), values("f1", "simclr", "linear", 10.0, 100)
    p_value = ttest_rel(balanced, imbalanced).pvalue
    assert row["reference"] == "1:1" and row["n_pairs"] == 3
    assert row["drop_pp"] == pytest.approx((balanced - imbalanced).mean() * 100)
    assert row["p_value"] == pytest.approx(p_value)
    assert row["p_holm"] >= row["p_value"]  # Holm over all 16 drop tests of the metric
    assert row["significant"] == (row["p_holm"] < 0.05) and row["note"] == ""
    assert list(stats["p_holm"]) == pytest.approx(list(holm(stats["p_value"])))


def test_reference_falls_back_to_the_smallest_ratio_and_few_pairs_get_no_p_value(study):
    results = downstream_results("s1")
    few = results[(results["ratio_r"] > 1) & (results["resample"] < 2)]
    stats = drops(few, "acc")
    assert set(stats["reference"]) == {"1:10"} and set(stats["ratio"]) == {"1:100"}
    assert stats["p_value"].isna().all() and not stats["significant"].any()
    assert stats["note"].str.contains("reference is 1:10").all() and stats["note"].str.contains("no p-value").all()
