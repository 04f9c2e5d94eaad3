"""Tables 5 and 6 of the paper: one metric as mean ± std over resamplings (in %), rows method x mode x budget,
columns the pre-training ratios in increasing r and the external baseline."""

from __future__ import annotations

import pandas as pd

from analysis.query import EXTERNAL, sort_rows
from cyto_ssrl.downstream.budgets import budget_label

ROW_KEYS = ["method", "backbone", "mode", "budget"]


def summary(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, std and count of `metric` in % per row and ratio; each method gets its backbone's external baseline
    as the ratio 'external'."""
    values = results.assign(value=results[metric] * 100)
    stats = values.groupby([*ROW_KEYS, "ratio_r", "ratio"])["value"].agg(["mean", "std", "count"]).reset_index()
    own = stats[stats["method"] != EXTERNAL]
    external = stats[stats["method"] == EXTERNAL].drop(columns="method")
    methods = own[["method", "backbone"]].drop_duplicates()
    return pd.concat([own, methods.merge(external, on="backbone")], ignore_index=True)


def ratio_columns(summary: pd.DataFrame) -> list[str]:
    """Ratio labels in increasing r, the external baseline last."""
    ordered = summary.sort_values("ratio_r")["ratio"].drop_duplicates().tolist()
    return [label for label in ordered if label != EXTERNAL] + [label for label in ordered if label == EXTERNAL]


def cell(mean: float, std: float, count: int) -> str:
    """'87.3 ± 1.2'; a single run has no spread, so just its value."""
    if pd.isna(mean):
        return "—"
    return f"{mean:.1f} ± {std:.1f}" if count > 1 else f"{mean:.1f}"


def markdown_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's form: one 'mean ± std' text cell per row and ratio ('—' where a ratio was not evaluated)."""
    cells = summary.assign(cell=[cell(*row) for row in summary[["mean", "std", "count"]].itertuples(index=False)])
    table = cells.pivot(index=ROW_KEYS, columns="ratio", values="cell")[ratio_columns(summary)].fillna("—")
    table = sort_rows(table.reset_index().rename_axis(columns=None))
    return table.assign(budget=table["budget"].map(budget_label)).rename(columns={"budget": "budget (%)"})


def numeric_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The same table with numbers for reuse: '<ratio> mean' and '<ratio> std' columns in %."""
    columns = ratio_columns(summary)
    wide = summary.pivot(index=ROW_KEYS, columns="ratio", values=["mean", "std"])
    ordered = [(stat, ratio) for ratio in columns for stat in ("mean", "std")]
    wide = wide[ordered].round(3)
    wide.columns = [f"{ratio} {stat}" for stat, ratio in ordered]
    return sort_rows(wide.reset_index())
