"""Typed settings of the downstream stage. Defaults run on a 2-core CPU; "paper" is the paper's recipe.

`preset(DOWNSTREAM_PRESETS, name, **overrides)` (cyto_ssrl.config) gives a copy with top-level overrides applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The modes that train a classifier on a label budget (the third, "representation", scores frozen features only).
TRAINED_MODES = ("linear", "finetune")
PAPER_BUDGETS: tuple[float, ...] = (100, 50, 10, 5, 1)  # % of the downstream partition
PAPER_BATCH_SIZES: dict[float, int] = {100: 512, 50: 256, 10: 64, 5: 64, 1: 32}


@dataclass
class TrainingSettings:
    """How one mode trains a classifier: MAE's recipe, lr = blr x batch / 256, linear warm-up then half-cosine."""

    epochs: int
    batch_sizes: dict[float, int]  # per budget (%); a budget not listed uses the nearest listed one
    blr: float
    warmup_epochs: float
    weight_decay: float
    min_lr: float = 0.0
    # A budget of a few dozen tiles is one batch an epoch, and at lr = blr x batch / 256 a small batch moves the
    # weights little: too few steps leave the head predicting one class. Epochs are raised until a draw trains for
    # at least this many optimiser steps.
    min_steps: int = 0
    blr_search: tuple[float, float] = (1e-5, 1e-1)  # the log-uniform range `tune` searches

    def batch_size(self, budget: float) -> int:
        return self.batch_sizes[min(self.batch_sizes, key=lambda listed: (abs(listed - budget), listed))]


@dataclass
class DownstreamConfig:
    # Linear probe (MAE's): BatchNorm without affine + Linear on frozen features, SGD with momentum 0.9. A few
    # small batches for 20 epochs learn nothing at the paper's blr 1.5e-3; 0.1 was best of 0.01-3 on the demo cohort.
    # Even so, 20 steps on a 5 % draw predicted one class (SE 0.01-0.03); 200 steps did not (SE 0.49-1.0).
    linear: TrainingSettings = field(
        default_factory=lambda: TrainingSettings(
            epochs=20,
            batch_sizes={100: 64, 50: 32, 10: 16, 5: 16, 1: 8},
            blr=0.1,
            warmup_epochs=2,
            weight_decay=0.0,
            min_steps=200,
            blr_search=(1e-3, 3.0),
        )
    )
    # Fine-tuning: the whole network and a Linear head, AdamW, through the pre-training loop. At 5 % the demo
    # cohort's draw is 14 tiles, one batch an epoch: 10 steps at the paper's blr 5e-4 (lr 2.7e-5) left both
    # resamplings predicting one class. 40 steps at blr 5e-3 predicted both in every draw (acc 0.91-0.95).
    finetune: TrainingSettings = field(
        default_factory=lambda: TrainingSettings(
            epochs=10,
            batch_sizes={100: 64, 50: 32, 10: 16, 5: 16, 1: 8},
            blr=5e-3,
            warmup_epochs=1,
            weight_decay=0.05,
            min_steps=40,
            blr_search=(1e-5, 1e-2),
        )
    )
    eval_batch_size: int = 64  # frozen encoding and prediction
    num_workers: int = 0
    knn_ks: tuple[int, ...] = (1, 5, 10, 20, 50)
    svm_folds: int = 5
    tsne_per_class: int = 1000
    cache_features: bool = True  # False: encode every call and write no cache file
    feature_dir: str = "outputs/features"
    seed: int = 0

    def training(self, mode: str) -> TrainingSettings:
        return self.linear if mode == "linear" else self.finetune


DOWNSTREAM_PRESETS: dict[str, DownstreamConfig] = {
    "tiny": DownstreamConfig(),
    # The paper: linear probe 100 epochs at blr 1.5e-3; fine-tuning 50 epochs at blr 5e-4 with 5 warm-up epochs
    # (MAE's fine-tuning weight decay 0.05 and min lr 1e-6); batches 512/256/64/64/32 for budgets 100/50/10/5/1 %.
    "paper": DownstreamConfig(
        linear=TrainingSettings(
            epochs=100,
            batch_sizes=dict(PAPER_BATCH_SIZES),
            blr=1.5e-3,
            warmup_epochs=10,
            weight_decay=0.0,
            blr_search=(1e-5, 1e-1),
        ),
        finetune=TrainingSettings(
            epochs=50,
            batch_sizes=dict(PAPER_BATCH_SIZES),
            blr=5e-4,
            warmup_epochs=5,
            weight_decay=0.05,
            min_lr=1e-6,
            blr_search=(1e-5, 1e-2),
        ),
        eval_batch_size=256,
        num_workers=8,
    ),
}
