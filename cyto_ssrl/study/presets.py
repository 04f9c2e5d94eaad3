"""Typed settings of a study: its grid (the axes, which may grow) and its settings (shared by every cell), with the
named presets: `demo` (the embedded default) and `paper`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StudyConfig:
    """The whole grid: tiles -> a pool per ratio -> pre-training per method x ratio x seed -> downstream per
    version x mode x budget x resample -> analysis.

    The axes (ratios ... resamples) may grow between runs of one study id: only the new cells run. Every other
    field is a setting that all cells of a study share; a study id refuses to be continued with other settings.
    """

    # axes
    ratios: tuple[str, ...] = ("1:1", "1:10", "1:100")
    methods: tuple[str, ...] = ("mae", "simclr")
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = ("linear", "finetune")
    budgets: tuple[float, ...] = (50, 10, 5)  # the demo cohort's downstream partition is too small for 1:1 at 100 %
    resamples: int = 2
    # settings
    # Budgets of one mode where they differ from `budgets`, e.g. {"finetune": (10,)}: on CPUs a fine-tuning draw
    # costs tens of linear probes, and a study may afford fewer of them.
    mode_budgets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    source: str = "synthetic"  # synthetic | slides | cells (stage 1), unless `manifest` is given
    input: str | None = None
    annotations: str | None = None
    manifest: str | None = None  # an existing tile manifest: the study skips tiling
    tile_preset: str = "tiny"
    # TileConfig fields over the tile preset's (stage 1), e.g. {"partitions": {...}, "default_mpp": 0.25}; "csv"
    # takes CsvAnnotationConfig fields as a dict ({"image_size": [1376, 1020]}), as JSON can give it.
    tile_overrides: dict[str, object] = field(default_factory=dict)
    pseudonymize: bool = True  # stage 1's: slide, patient and tile ids as keyed hashes; false keeps public data's names
    pool_size: int = 200
    pretrain_preset: str = "tiny"  # tiny | paper | a PRETRAIN_PRESETS name (tiny/paper pick the method's variant)
    pretrain_overrides: dict[str, object] = field(default_factory=dict)  # PretrainConfig fields, e.g. {"epochs": 1}
    num_processes: int = 1  # accelerate processes per pre-training
    downstream_preset: str = "tiny"
    # > 0: an Optuna search of the downstream blr (this many trials) per version x mode x budget, on the budget's
    # first draw, before its downstream cells, which then train with the best blr; 0: the preset's blr.
    tune_trials: int = 0
    tune_storage: str = ""  # Optuna storage URL; "" is optuna.db beside a SQLite tracking store
    representation: bool = True  # k-NN, k-means, SVM and t-SNE of each registered version's frozen features
    # Baseline of the box plots (paper Fig. 4/5): "random" registers a randomly initialised backbone per method's
    # backbone; a path registers those local weights (e.g. ImageNet) for every method whose backbone they fit;
    # "" has no baseline.
    external: str = "random"
    output: str = "outputs/studies"
    # Where cells run (not a setting of the study: a study may move between engines): "local" (one after another in
    # this process), "slurm" (each cell a SLURM job through submitit, resources from `slurm`) or "ray" (each cell a
    # Ray task on the cluster at `ray_address`, a local Ray instance when ""). See study/executors/.
    executor: str = "local"
    slurm: dict[str, object] = field(default_factory=dict)  # SlurmSettings fields: partition, account, qos ...
    ray_address: str = ""
    # Cells that train ask the engine for GPUs (pre-training one per process, downstream one): None where the engine
    # has any (sinfo's GRES, Ray's cluster resources); false on a CPU cluster with a few GPU nodes you leave be.
    gpus: bool | None = None


EXECUTORS = ("local", "slurm", "ray")  # study/executors/: one module each
STUDY_AXES = ("ratios", "methods", "seeds", "modes", "budgets", "resamples")
# Fields that say where and how cells run, not what they compute: they may change between runs of one study.
RUNTIME_FIELDS = ("executor", "slurm", "ray_address", "gpus")


PAPER_RATIOS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)  # positive:negative = 1:r, the paper's nine pools


STUDY_PRESETS: dict[str, StudyConfig] = {
    # The embedded default and a positive control: synthetic slides whose positive cells look like no negative cell
    # (tile preset tiny, SyntheticConfig.positive_look "distinct"; benchmarks/positive_control.py runs the "shared"
    # look beside it). Under 10 minutes on 2 CPU cores: MAE only (SimCLR's ResNet-18 pre-trains 2.4x slower), the
    # linear probe only (fine-tuning a ViT on CPU takes 15-30 s a draw: 60 draws would be 20 minutes), with the
    # paper's 5 resamplings so the paired tests have pairs. 16 epochs of 200 tiles (100 steps) instead of the tiny
    # presets' 4, so the backbones move away from their common init.
    "demo": StudyConfig(methods=("mae",), modes=("linear",), resamples=5, pretrain_overrides={"epochs": 16}),
    # The paper: 9 ratios x MAE/SimCLR x linear/fine-tune x 5 budgets x 5 resamplings, pools of 80,000 tiles.
    "paper": StudyConfig(
        ratios=tuple(f"1:{r}" for r in PAPER_RATIOS),
        budgets=(100, 50, 10, 5, 1),
        resamples=5,
        source="slides",
        tile_preset="paper",
        pool_size=80_000,
        pretrain_preset="paper",
        downstream_preset="paper",
        num_processes=8,
        external="",
    ),
}

# Real public cells in ../shared/data (paths relative to the working directory: run from the repo root with
# ../shared beside it). Both split 0.5 : 0.3 : 0.2, not the paper's 120,000 : 40,000 : 8,000, which would leave a
# few dozen evaluation tiles. Ratios, pools and budgets are what the ssrl and downstream partitions of that split
# allow (counted from their tilings, seed 0). 32 px tiles and the tiny backbones: on 2 shared CPU cores a 64 px
# fine-tuning of 80 tiles took 45 s; at 32 px (16 ViT patches instead of 64) about a quarter of that.
REAL_PARTITIONS = {"ssrl": 0.5, "downstream": 0.3, "evaluation": 0.2}
REAL_TILE_SIZE = 32
# Of the budgets the downstream partitions (about 100 tiles, 1:1) allow, 100/50/10/5 %, the linear probe runs 100 %
# (80 training tiles, already fewer than the paper's 1 % of 40,000) and 10 % (4 training tiles a class); 5 % trains
# on one tile a class. Fine-tuning runs 10 % only: at least 40 optimiser steps a draw make a 100 % fine-tuning of
# ResNet-18 about 90 s on 2 busy cores, and the grid holds 50 of them a budget.
REAL_BUDGETS = (100, 10)
REAL_AXES = {
    "methods": ("mae", "simclr"),
    "modes": ("linear", "finetune"),
    "budgets": REAL_BUDGETS,
    "mode_budgets": {"finetune": (10,)},
    "resamples": 5,  # the paper's
    "external": "random",  # the "does pre-training help at all" baseline the paired tests compare with
    "representation": True,
    "pseudonymize": False,  # public data: the real image names identify nobody
}
# Pre-training settings both share: 32 px inputs (ViT-tiny patch 8: 16 tokens), no loader worker processes (a
# pool of 32 px images loads in milliseconds; two workers take seconds to start on a busy machine), and a
# checkpoint every 10 epochs (a killed minute-long training loses little).
REAL_PRETRAIN = {"img_size": REAL_TILE_SIZE, "num_workers": 0, "checkpoint_every": 10}
STUDY_PRESETS["herlev"] = StudyConfig(
    # Herlev's ssrl partition has 237 abnormal and only 84 normal cells: negatives, not positives, bound the pools.
    # A pool of 85 holds 1:1 (42 + 43) up to 1:84 (one positive and every negative), the most extreme possible.
    ratios=("1:1", "1:5", "1:20", "1:84"),
    source="cells",
    input="../shared/data/herlev/train",
    tile_overrides={"partitions": dict(REAL_PARTITIONS), "tile_size": REAL_TILE_SIZE},  # each cell scaled to fit
    pool_size=85,
    # 85 tiles are 2 batches of 32 an epoch: 30 epochs are 60 optimiser steps (SimCLR about 65 s, MAE 25 s).
    pretrain_overrides={**REAL_PRETRAIN, "epochs": 30},
    **REAL_AXES,
)
STUDY_PRESETS["cric"] = StudyConfig(
    # 32 px at 1.172 um/px (37.5 um, one or two cells; the tiny preset's 64 px tiles of 75 um give 211 tiles from
    # the 50 fields, 50 of them positive ssrl tiles): 135 positive and 465 negative ssrl tiles. A pool of 270
    # holds 1:1 (every positive and 135 negatives) up to 1:269 (one positive), the most extreme possible.
    ratios=("1:1", "1:5", "1:20", "1:269"),
    source="slides",
    input="../shared/data/cric/dataset",
    annotations="../shared/data/cric/classifications.csv",
    # CRIC's coordinates are given at 1376x1020 (the PNGs here are resampled to 1280x960 and carry no um/px):
    # 0.25 um/px as the README's tiling command assumes.
    tile_overrides={
        "partitions": dict(REAL_PARTITIONS),
        "tile_size": REAL_TILE_SIZE,
        "default_mpp": 0.25,
        "csv": {"image_size": (1376, 1020)},
    },
    pool_size=270,
    # 270 tiles are 8 batches of 32: 8 epochs are 64 optimiser steps, about as many as Herlev's.
    pretrain_overrides={**REAL_PRETRAIN, "epochs": 8},
    **REAL_AXES,
)
