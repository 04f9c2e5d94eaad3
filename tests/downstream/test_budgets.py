"""Label budgets: exact, balanced train and validation counts, and budgets that cannot be drawn."""

from __future__ import annotations

import pandas as pd
import pytest

from cyto_ssrl.downstream.budgets import draw_budget, parse_budgets
from cyto_ssrl.downstream.config import PAPER_BUDGETS, TrainingSettings
from cyto_ssrl.downstream.setup import budget_loop
from cyto_ssrl.errors import CytoError


def tiles_table(n_pos: int, n_neg: int) -> pd.DataFrame:
    ids = [f"t{i:06d}" for i in range(n_pos + n_neg)]
    return pd.DataFrame({"tile_id": ids, "y": [1] * n_pos + [0] * n_neg})


@pytest.mark.parametrize(
    "budget, n_train, n_val",
    [(100, 32_000, 8_000), (50, 16_000, 4_000), (10, 3_200, 800), (5, 1_600, 400), (1, 320, 80), (0.5, 160, 40)],
)
def test_budgets_have_exact_counts_balanced_in_train_and_val(budget, n_train, n_val):
    tiles = tiles_table(20_000, 20_000)  # the paper's downstream partition: 40,000 tiles
    train, val = draw_budget(tiles, budget, resample=0, seed=0)
    assert (len(train), len(val)) == (n_train, n_val)
    assert train["y"].sum() == n_train // 2 and val["y"].sum() == n_val // 2
    assert not set(train["tile_id"]) & set(val["tile_id"])
    again, _ = draw_budget(tiles, budget, resample=0, seed=0)
    other, _ = draw_budget(tiles, budget, resample=1, seed=0)
    assert again.equals(train) and (budget == 100 or not other.equals(train))


def test_infeasible_and_out_of_range_budgets():
    with pytest.raises(CytoError, match="needs 51 positive and 51 negative downstream tiles; the partition has 30 and"):
        draw_budget(tiles_table(30, 1_000), 10, resample=0, seed=0)
    for budget in (0, -1, 150):
        with pytest.raises(CytoError, match=r"not in \(0, 100\]"):
            draw_budget(tiles_table(500, 500), budget, resample=0, seed=0)
    with pytest.raises(CytoError, match="needs at least 4"):
        draw_budget(tiles_table(50, 50), 1, resample=0, seed=0)
    assert parse_budgets("100,50,10,5,1") == PAPER_BUDGETS
    with pytest.raises(CytoError, match="comma-separated"):
        parse_budgets("100;50")


@pytest.mark.parametrize("n_train, epochs", [(14, 200), (64, 50), (1000, 20)])
def test_small_budgets_train_at_least_min_steps(n_train, epochs):
    settings = TrainingSettings(epochs=20, batch_sizes={5: 16}, blr=0.1, warmup_epochs=2, weight_decay=0, min_steps=200)
    loop = budget_loop(settings, 5, n_train, settings.blr, None, seed=0, num_workers=0)
    assert loop.batch_size == min(16, n_train) and loop.epochs == epochs
    assert loop.epochs * (n_train // loop.batch_size) >= 200
