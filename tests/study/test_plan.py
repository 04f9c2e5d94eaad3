"""The study's grid: every cell once, after what it needs; tuned, grown and JSON-defined grids."""

from __future__ import annotations

import json

from cyto_ssrl.downstream.budgets import budget_label
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import STUDY_PRESETS


def test_demo_and_paper_grids_have_every_cell_once_after_what_it_needs():
    for name, expected in [
        ("demo", 1 + 3 + 3 + 1 + 4 * (1 * 3 * 5 + 1) + 1),
        ("paper", 1 + 9 + 18 + 18 * (2 * 5 * 5 + 1) + 1),
    ]:
        cells = plan(STUDY_PRESETS[name])
        keys = [c.key for c in cells]
        assert len(keys) == len(set(keys)) == expected, name
        seen = set()
        for cell in cells:
            assert set(cell.needs) <= seen, f"{cell.key} comes before what it needs"
            seen.add(cell.key)
    paper = [c.key for c in plan(STUDY_PRESETS["paper"])]
    assert "pretrain/simclr/1:10000/s0" in paper and "downstream/pretrain/mae/1:500/s0/finetune/b1/r4" in paper
    # The paper's nine pools (issue: 1:1, 1:5 ... 1:5,000, 1:10,000).
    assert [c.ratio for c in plan(STUDY_PRESETS["paper"]) if c.stage == "pools"] == [
        "1:1",
        "1:5",
        "1:10",
        "1:50",
        "1:100",
        "1:500",
        "1:1000",
        "1:5000",
        "1:10000",
    ]


def test_a_tuned_grid_searches_each_budgets_lr_before_its_downstream_cells():
    untuned = plan(STUDY_PRESETS["demo"])
    cells = plan(load_config("demo", tune_trials=3))
    tunes = [c for c in cells if c.stage == "tune"]
    assert not any(c.stage == "tune" for c in untuned)
    assert len(tunes) == 4 * 1 * 3 and len(cells) == len(untuned) + len(tunes)  # versions x modes x budgets
    for cell in cells:
        if cell.stage == "downstream":
            tune = f"tune/{cell.model}/{cell.mode}/b{budget_label(cell.budget)}"
            assert tune in cell.needs and tune in {c.key for c in tunes}, cell.key
    assert "tune/pretrain/mae/1:10/s0/linear/b5" in {c.key for c in tunes}


def test_a_grown_study_keeps_every_cell_it_had():
    small = {c.key for c in plan(STUDY_PRESETS["demo"])}
    grown = {c.key for c in plan(load_config("demo", ratios=("1:1", "1:10", "1:100", "1:1000"), seeds=(0, 1)))}
    assert small <= grown
    assert {"pools/1:1000/s0", "pretrain/mae/1:1/s1", "pretrain/mae/1:1000/s1"} <= grown - small


def test_preset_from_a_json_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"ratios": ["1:1", "1:5"], "budgets": [10], "pool_size": 100}))
    cfg = load_config(str(path), methods=("simclr",))
    assert (cfg.ratios, cfg.budgets, cfg.pool_size, cfg.methods) == (("1:1", "1:5"), (10,), 100, ("simclr",))
