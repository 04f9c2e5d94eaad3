"""Typed configuration for every stage. Defaults run on a 2-core CPU; the paper's settings are named presets.

Each stage has one dataclass and one dict of presets. `preset(PRESETS, name, **overrides)` returns a copy with
overrides applied, so an entry point is `cfg = preset(TILE_PRESETS, args.preset, seed=args.seed)`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from cyto_ssrl.errors import CytoError

# SIPaKMeD (Plissiti et al. 2018) and Herlev (Jantzen et al. 2005) class folders -> label. None leaves the class out:
# Metaplastic cells are neither normal squamous nor abnormal (SIPaKMeD paper; Stegmueller et al.).
DEFAULT_CELL_CLASSES: dict[str, str | None] = {
    "dyskeratotic": "positive",
    "koilocytotic": "positive",
    "superficial-intermediate": "negative",
    "parabasal": "negative",
    "metaplastic": None,
    "carcinoma_in_situ": "positive",
    "light_dysplastic": "positive",
    "moderate_dysplastic": "positive",
    "severe_dysplastic": "positive",
    "normal_columnar": "negative",
    "normal_intermediate": "negative",
    "normal_superficiel": "negative",
}

# The paper's tile counts per partition (120,000 : 40,000 : 8,000); only the proportions matter.
PAPER_PARTITIONS: dict[str, float] = {"ssrl": 120_000, "downstream": 40_000, "evaluation": 8_000}


@dataclass
class SyntheticConfig:
    """A cohort of synthetic pyramidal slides with QuPath GeoJSON cell annotations."""

    n_slides: int = 12
    positive_slide_fraction: float = 0.5
    prevalence: float = 0.01  # fraction of cells on a positive slide that are positive (paper Fig. 1: about 1 %)
    mpps: tuple[float, ...] = (0.243, 0.293, 0.180)  # the paper's three scanners, cycled over slides
    deposit_um: float = 1000.0  # diameter of the cell-deposit region
    margin_um: float = 120.0  # bright background around the deposit
    cells_per_mm2: float = 450.0
    levels: int = 5  # 1, 2, 4, 8, 16: down to a few hundred px, like a scanner's pyramid (the deposit check reads it)
    level_downsample: int = 2
    tiff_tile: int = 256
    compression: str = "jpeg"  # or "zlib"
    seed: int = 0


@dataclass
class CsvAnnotationConfig:
    """How to read cell points from a CSV (CRIC's classifications.csv by default)."""

    image_column: str = "image_filename"
    x_column: str = "nucleus_x"
    y_column: str = "nucleus_y"
    label_column: str = "bethesda_system"
    negative_classes: tuple[str, ...] = ("Negative for intraepithelial lesion",)
    # Size of the image the coordinates refer to; None when they are level-0 pixels of the slide itself.
    image_size: tuple[int, int] | None = None


@dataclass
class TileConfig:
    """Stage 1: slides (or cell crops) to a labelled tile manifest."""

    tile_size: int = 512
    target_mpp: float = 0.293
    min_deposit: float = 0.5  # fraction of a tile's area that must be cell deposit
    partitions: dict[str, float] = field(default_factory=lambda: dict(PAPER_PARTITIONS))
    # Partitions drawn 1:1 positive:negative from their own slides' tiles, after the split and the labels, before any
    # tile is cut; their ambiguous and unlabelled tiles go. The paper's downstream partition is 1:1 (a budget of b %
    # is drawn 1:1 from it, 100 % is all of it). The paper does not say how its evaluation partition was drawn: 1:1
    # here, so accuracy equals balanced accuracy and precision and F1 do not depend on the collection's prevalence
    # (the paper reports Acc next to SP and SE); ("downstream",) keeps the natural prevalence in evaluation, () in
    # both. Never ssrl: pools are drawn from all its tiles at each ratio.
    balance: tuple[str, ...] = ("downstream", "evaluation")
    positive_cell_fraction: float = 0.0  # 0: a positive cell's centre must lie in the tile; >0: this part of its polygon
    default_mpp: float | None = None  # used for slides whose metadata has none
    slide_mpp: dict[str, float] = field(default_factory=dict)  # per-slide override, by slide id
    max_tiles_per_slide: int | None = None
    image_format: str = "jpg"
    jpeg_quality: int = 90
    workers: int = 2
    seed: int = 0
    strict: bool = False  # a slide that gives no tile (unreadable, no deposit) stops the run instead of being skipped
    cell_classes: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_CELL_CLASSES))
    csv: CsvAnnotationConfig = field(default_factory=CsvAnnotationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


TILE_PRESETS: dict[str, TileConfig] = {
    "paper": TileConfig(),
    # 64 px at 4 x 0.293 um/px covers 75 um, a couple of cells. The demo cohort carries far more positive cells than
    # a smear, and enough slides that the downstream partition gets two slides of each class: 189 tiles a class,
    # drawn 1:1, so all five paper budgets (1 % needs 350 tiles) and pools of 200 at 1:1 and 1:100 can be drawn.
    "tiny": TileConfig(tile_size=64, target_mpp=1.172,
                       synthetic=SyntheticConfig(n_slides=16, deposit_um=1200.0, prevalence=0.6)),
}


@dataclass
class PretrainConfig:
    """Stage 3: one SSL method on one backbone. Unused method-specific fields are ignored by other methods."""

    method: str = "mae"
    backbone: str = "vit_tiny"  # vit_tiny|vit_small|vit_base (patch_size below) or any timm ResNet name
    patch_size: int = 8
    img_size: int = 64
    epochs: int = 4
    batch_size: int = 32  # global: split over processes and gradient-accumulation steps
    grad_accum_steps: int = 1
    blr: float = 1.5e-4  # lr = blr * global batch / 256 unless lr is given (MAE's rule)
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    mixed_precision: str = "no"  # no|fp16|bf16
    num_workers: int = 2
    checkpoint_every: int = 1  # epochs
    seed: int = 0
    # MAE
    mask_ratio: float = 0.5
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    # contrastive / self-distillation heads
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    temperature: float = 0.1  # SimCLR NT-Xent; MoCo uses its own below
    moco_temperature: float = 0.07
    momentum: float = 0.999  # MoCo key encoder / DINO teacher EMA
    queue_size: int = 4096
    dino_out_dim: int = 1024
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9


PRETRAIN_PRESETS: dict[str, PretrainConfig] = {
    # CPU presets: a couple of minutes on 2 cores, 64 px tiles, and the loss still falls.
    # MAE's blr (1.5e-4) is set for ~800 epochs at batch 4,096; at batch 32 for a few hundred steps the encoder
    # barely leaves its initialisation (demo: reconstruction loss 0.82 after 16 epochs, 0.42 at 1.5e-3).
    "tiny-mae": PretrainConfig(blr=1.5e-3),
    "tiny-simclr": PretrainConfig(method="simclr", backbone="resnet18", blr=1.5e-3, weight_decay=1e-6),
    "tiny-dino": PretrainConfig(method="dino", blr=5e-4, weight_decay=0.04, momentum=0.996, dino_out_dim=1024),
    "tiny-moco": PretrainConfig(method="moco", backbone="resnet18", blr=1e-3, weight_decay=1e-6, queue_size=1024,
                                momentum=0.99),
    # The paper's Table 3. MAE: ViT-B/16, mask 0.5, lr 2.25e-4 at global batch 384 (= blr 1.5e-4 x 384 / 256).
    "paper-mae": PretrainConfig(backbone="vit_base", patch_size=16, img_size=224, epochs=200, batch_size=384,
                                blr=1.5e-4, warmup_epochs=10, decoder_dim=512, decoder_depth=8, decoder_heads=16,
                                num_workers=8, checkpoint_every=10),
    # SimCLR: ResNet-50, batch 512, lr 3e-3 (= blr 1.5e-3 x 512 / 256).
    "paper-simclr": PretrainConfig(method="simclr", backbone="resnet50", img_size=224, epochs=200, batch_size=512,
                                   blr=1.5e-3, weight_decay=1e-6, warmup_epochs=10, proj_hidden_dim=2048,
                                   num_workers=8, checkpoint_every=10),
    # DINO for Pap smears (Stegmueller et al.): ViT-S/16, global crops only, EMA teacher 0.996, centring.
    "stegmuller-dino": PretrainConfig(method="dino", backbone="vit_small", patch_size=16, img_size=224, epochs=100,
                                      batch_size=256, blr=5e-4, weight_decay=0.04, warmup_epochs=10,
                                      momentum=0.996, dino_out_dim=65536, num_workers=8, checkpoint_every=10),
    # MoCo v2 as CCRL (Nakhli et al.) uses it: temperature 0.07, momentum 0.999, 65,536 queued negatives.
    "ccrl-moco": PretrainConfig(method="moco", backbone="resnet50", img_size=224, epochs=200, batch_size=256,
                                blr=1e-3, weight_decay=1e-6, warmup_epochs=10, queue_size=65536,
                                proj_hidden_dim=2048, num_workers=8, checkpoint_every=10),
}  # fmt: skip


def pretrain_preset_name(name: str, method: str) -> str:
    """'tiny' and 'paper' name the variant of the chosen method (tiny-simclr, paper-mae ...)."""
    if name == "paper":
        return {"mae": "paper-mae", "simclr": "paper-simclr", "dino": "stegmuller-dino", "moco": "ccrl-moco"}.get(
            method, name
        )
    return f"tiny-{method}" if name == "tiny" else name


def preset(presets: dict, name: str, **overrides):
    """A copy of `presets[name]` with the non-None overrides applied; unknown names are a one-line error."""
    if name not in presets:
        raise CytoError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    cfg = copy.deepcopy(presets[name])
    fields = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            raise CytoError(f"{type(cfg).__name__} has no setting {key!r}")
        setattr(cfg, key, value)
    return cfg


def flatten(cfg, prefix: str = "") -> dict[str, object]:
    """Dataclass to a flat dict of MLflow params (nested dataclasses become dotted keys)."""
    flat: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


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


STUDY_AXES = ("ratios", "methods", "seeds", "modes", "budgets", "resamples")


PAPER_RATIOS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)  # positive:negative = 1:r, the paper's nine pools

STUDY_PRESETS: dict[str, StudyConfig] = {
    # The embedded default: synthetic slides, 3 ratios x 2 methods, about 10 minutes on 2 CPU cores. 16 epochs
    # of 200 tiles (100 steps) instead of the tiny presets' 4, so the backbones move away from their common init.
    "demo": StudyConfig(pretrain_overrides={"epochs": 16}),
    # The paper: 9 ratios x MAE/SimCLR x linear/fine-tune x 5 budgets x 5 resamplings, pools of 80,000 tiles.
    "paper": StudyConfig(ratios=tuple(f"1:{r}" for r in PAPER_RATIOS),
                         budgets=(100, 50, 10, 5, 1), resamples=5, source="slides", tile_preset="paper",
                         pool_size=80_000, pretrain_preset="paper", downstream_preset="paper", num_processes=8,
                         external=""),
}  # fmt: skip
