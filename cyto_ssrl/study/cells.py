"""What each kind of cell does: a table from stage to the function that runs it, given the cell and the run it owns.

The runner looks a cell's function up in `STAGES` (tests pass their own table). Each function reads what the cells
it needs produced from the ledger, then calls the stage's tracked function inside the cell's run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from analysis.report import analyze
from cyto_ssrl import tracking
from cyto_ssrl.downstream.setup import Setup, base_lr, prepare
from cyto_ssrl.files import save_weights
from cyto_ssrl.methods import create_backbone
from cyto_ssrl.stages.downstream import budget_run, representation_run
from cyto_ssrl.stages.pools import run_pools
from cyto_ssrl.stages.pretrain import register_external, run_pretrain
from cyto_ssrl.stages.tiles import run_tiles
from cyto_ssrl.stages.tune import tune_setup
from cyto_ssrl.study.config import baseline_methods, external_weights, pretrain_config, tile_overrides
from cyto_ssrl.study.ledger import Ledger
from cyto_ssrl.study.plan import Cell
from cyto_ssrl.study.presets import StudyConfig


@dataclass
class Context:
    """What the cells of one study share: its settings, folder and ledger, and the downstream setups made so far."""

    study_id: str
    cfg: StudyConfig
    folder: Path
    ledger: Ledger
    setups: dict[str, Setup] = field(default_factory=dict)

    def manifest(self) -> str:
        return self.cfg.manifest or self.ledger.output("tiles", "manifest")

    def setup(self, cell: Cell) -> Setup:
        """The downstream setup of the backbone `cell` evaluates, made once (its features are cached on disk)."""
        run_id = self.ledger.current[cell.model]  # a backbone trained again is a new setup
        if run_id not in self.setups:
            uri = self.ledger.output(cell.model, "model_uri")
            self.setups[run_id] = prepare(uri, self.cfg.downstream_preset, self.manifest(), cell.seed)
        return self.setups[run_id]


def do_tiles(ctx: Context, cell: Cell, run_id: str) -> None:
    cfg = ctx.cfg
    tiles = str(ctx.folder / "tiles")
    overrides = {"pseudonymize": cfg.pseudonymize, **tile_overrides(cfg.tile_overrides)}
    run_tiles(cfg.source, cfg.input, tiles, cfg.tile_preset, cfg.annotations, run_id=run_id, **overrides)


def do_pools(ctx: Context, cell: Cell, run_id: str) -> None:
    run_pools(
        ctx.manifest(), cell.ratio, ctx.cfg.pool_size, cell.seed, output_dir=str(ctx.folder / "pools"), run_id=run_id
    )


def do_pretrain(ctx: Context, cell: Cell, run_id: str) -> None:
    cfg = ctx.cfg
    if own_checkpoint(run_id):  # the engine started this job again (preempted, requeued): go on in the same run
        tqdm.write(f"cell {cell.key}: training goes on in run {run_id} from its last checkpoint")
        run_pretrain(resume=run_id, num_processes=cfg.num_processes)
        return
    checkpoint = ctx.ledger.checkpoint(cell)
    if checkpoint:
        tqdm.write(f"cell {cell.key}: training continues from the last checkpoint in {checkpoint}")
    run_pretrain(
        cell.method,
        cell.ratio,
        cfg.pretrain_preset,
        pool=ctx.ledger.output(cell.needs[0], "pool_path"),
        pool_size=cfg.pool_size,
        seed=cell.seed,
        num_processes=cfg.num_processes,
        output_dir=str(ctx.folder / "pretrain"),
        continue_from=checkpoint,
        run_id=run_id,
        **cfg.pretrain_overrides,
    )


def own_checkpoint(run_id: str) -> bool:
    job_dir = tracking.run_tags(run_id).get("job_dir")
    return bool(job_dir) and (Path(job_dir) / "epoch.json").exists()


def do_external(ctx: Context, cell: Cell, run_id: str) -> None:
    methods = baseline_methods(ctx.cfg, cell.backbone)
    preset_name, pretrain_cfg = pretrain_config(ctx.cfg, methods[0])
    weights = external_weights(ctx.cfg)[cell.backbone]
    if weights == "random":
        weights = random_init_weights(pretrain_cfg, ctx.folder / "external")
    register_external(
        weights, methods[0], preset_name, baseline_for=",".join(methods), run_id=run_id, **ctx.cfg.pretrain_overrides
    )


def random_init_weights(pretrain_cfg, folder: Path) -> str:
    """A seeded randomly initialised backbone as a weights file: the 'does pre-training help at all' baseline."""
    path = folder / pretrain_cfg.backbone / f"random-init-{pretrain_cfg.img_size}px.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        backbone = create_backbone(pretrain_cfg.backbone, pretrain_cfg.img_size, pretrain_cfg.patch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(backbone, path)  # concurrent cells may write it at once: each writes the same seeded weights
    return str(path)


def do_tune(ctx: Context, cell: Cell, run_id: str) -> None:
    tune_setup(ctx.setup(cell), cell.mode, cell.budget, ctx.cfg.tune_trials, ctx.cfg.tune_storage, run_id=run_id)


def do_downstream(ctx: Context, cell: Cell, run_id: str) -> None:
    setup = ctx.setup(cell)
    blr = base_lr(setup, cell.mode, cell.budget, "tuned" if ctx.cfg.tune_trials else None, ctx.cfg.tune_storage)
    budget_run(setup, cell.mode, cell.budget, cell.resample, blr, None, run_id=run_id)


def do_representation(ctx: Context, cell: Cell, run_id: str) -> None:
    representation_run(ctx.setup(cell), run_id=run_id)


def do_analysis(ctx: Context, cell: Cell, run_id: str) -> None:
    analyze(ctx.study_id, ctx.folder / "analysis", run_id=run_id)


STAGES = {
    "tiles": do_tiles,
    "pools": do_pools,
    "pretrain": do_pretrain,
    "external": do_external,
    "tune": do_tune,
    "downstream": do_downstream,
    "representation": do_representation,
    "analysis": do_analysis,
}
