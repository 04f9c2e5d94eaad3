"""The `herlev` and `cric` presets on the real data: their tiling (through the study's tile overrides) gives an
ssrl partition that holds every ratio's pool, one positive at the most extreme ratio, and a downstream partition
that every budget can be drawn from."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cyto_ssrl.data.pools import parse_ratio, pool_counts
from cyto_ssrl.downstream.budgets import budget_counts
from cyto_ssrl.stages.tiles import run_tiles
from cyto_ssrl.study.config import tile_overrides
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import STUDY_PRESETS


def shared(path: str | None, shared_data: Path) -> str | None:
    """A preset's ../shared/data path under the test's data folder (tests run in a temporary folder)."""
    return None if path is None else str(shared_data / Path(path).relative_to("../shared/data"))


@pytest.mark.parametrize("name", ["herlev", pytest.param("cric", marks=pytest.mark.slow)])
def test_real_preset_tiles_hold_every_ratio_and_budget(name, store, shared_data, tmp_path):
    cfg = STUDY_PRESETS[name]
    overrides = tile_overrides(cfg.tile_overrides)
    _, manifest = run_tiles(
        cfg.source,
        shared(cfg.input, shared_data),
        str(tmp_path / "tiles"),
        cfg.tile_preset,
        shared(cfg.annotations, shared_data),
        pseudonymize=cfg.pseudonymize,
        **overrides,
    )
    tiles = pd.read_parquet(manifest)
    ssrl = tiles.loc[tiles["partition"] == "ssrl", "label"].value_counts()
    counts = [pool_counts(cfg.pool_size, parse_ratio(ratio)) for ratio in cfg.ratios]
    assert all(pos <= ssrl["positive"] and neg <= ssrl["negative"] for pos, neg in counts)
    assert counts[-1][0] == 1  # the most extreme ratio keeps a single positive
    n_downstream = int((tiles["partition"] == "downstream").sum())
    assert all(budget_counts(n_downstream, budget)[0] >= 1 for budget in cfg.budgets)


def test_csv_tile_overrides_from_json_become_the_csv_settings():
    overrides = tile_overrides({"tile_size": 32, "csv": {"image_size": [1376, 1020]}})
    assert overrides["tile_size"] == 32 and overrides["csv"].image_size == (1376, 1020)
    assert overrides["csv"].label_column == "bethesda_system"  # the other CSV settings keep their defaults


def test_mode_budgets_limit_fine_tuning_to_its_own_budgets():
    cells = [c for c in plan(STUDY_PRESETS["herlev"]) if c.stage == "downstream"]
    budgets = {mode: sorted({c.budget for c in cells if c.mode == mode}) for mode in ("linear", "finetune")}
    assert budgets == {"linear": [10, 100], "finetune": [10]}
    assert len(cells) == 10 * (2 + 1) * 5  # 8 pre-trained and 2 baseline backbones x budgets x resamplings
