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
    source: str = "synthetic"  # synthetic | slides | cells (stage 1), unless `manifest` is given
    input: str | None = None
    annotations: str | None = None
    manifest: str | None = None  # an existing tile manifest: the study skips tiling
    tile_preset: str = "tiny"
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
