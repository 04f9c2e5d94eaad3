"""The grid of a study as cells, each after the cells it needs. Pure: nothing here reads or writes a store.

A cell is one unit of work with a key (`pretrain/mae/1:10/s0`), built here and nowhere else; every cell is one
MLflow run, tagged `study=<id>` and `study_cell=<key>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cyto_ssrl.data.pools import parse_ratio, ratio_label
from cyto_ssrl.names import budget_label
from cyto_ssrl.study.config import external_weights, mode_budgets
from cyto_ssrl.study.presets import StudyConfig

STAGES = ("tiles", "pools", "pretrain", "external", "tune", "downstream", "representation", "analysis")


@dataclass(frozen=True)
class Cell:
    """One unit of the grid. Cells that evaluate a backbone name the cell that registers it (`model`) and carry its
    pre-training seed; `digest` names the finished runs the analysis summarises (filled in once they are done)."""

    stage: str
    ratio: str = ""
    method: str = ""
    seed: int = 0
    backbone: str = ""
    model: str = ""
    mode: str = ""
    budget: float = 0.0
    resample: int = 0
    needs: tuple[str, ...] = ()
    digest: str = ""

    @property
    def key(self) -> str:
        budget = f"b{budget_label(self.budget)}"
        return {
            "tiles": "tiles",
            "pools": f"pools/{self.ratio}/s{self.seed}",
            "pretrain": f"pretrain/{self.method}/{self.ratio}/s{self.seed}",
            "external": f"external/{self.backbone}",
            "tune": f"tune/{self.model}/{self.mode}/{budget}",
            "downstream": f"downstream/{self.model}/{self.mode}/{budget}/r{self.resample}",
            "representation": f"representation/{self.model}",
            "analysis": f"analysis/{self.digest}",
        }[self.stage]


def plan(cfg: StudyConfig) -> list[Cell]:
    """Every cell of the grid, each after the cells it needs; the analysis last."""
    tiles = () if cfg.manifest else (Cell("tiles"),)
    need_tiles = tuple(c.key for c in tiles)
    pools, models = [], []
    for seed in cfg.seeds:
        for ratio in (ratio_label(parse_ratio(r)) for r in cfg.ratios):
            pool = Cell("pools", ratio=ratio, seed=seed, needs=need_tiles)
            pools.append(pool)
            models += [Cell("pretrain", ratio=ratio, method=m, seed=seed, needs=(pool.key,)) for m in cfg.methods]
    models += [Cell("external", backbone=b, seed=cfg.seeds[0]) for b in external_weights(cfg)]
    evaluations = [cell for model in models for cell in _evaluations(cfg, model, need_tiles)]
    cells = [*tiles, *pools, *models, *evaluations]
    return [*cells, Cell("analysis", needs=tuple(c.key for c in cells))]


def _evaluations(cfg: StudyConfig, model: Cell, need_tiles: tuple[str, ...]) -> list[Cell]:
    """The downstream cells of one backbone, each budget's blr search first when tuned, and its representation."""
    needs = (model.key, *need_tiles)
    of_model = {"model": model.key, "seed": model.seed}
    cells = []
    for mode in cfg.modes:
        for budget in mode_budgets(cfg, mode):
            budget_needs = needs
            if cfg.tune_trials:
                tune = Cell("tune", mode=mode, budget=budget, needs=needs, **of_model)
                cells.append(tune)
                budget_needs = (*needs, tune.key)
            cells += [
                Cell("downstream", mode=mode, budget=budget, resample=resample, needs=budget_needs, **of_model)
                for resample in range(cfg.resamples)
            ]
    if cfg.representation:
        cells.append(Cell("representation", needs=needs, **of_model))
    return cells
