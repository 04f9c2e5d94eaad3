"""What the downstream runs of one registered backbone share, and the pieces they train with: its setup (model
version, labelled tiles, settings, cached frozen features), the loop settings of a budget, training on a budget's
split and scoring the evaluation partition. `stages.downstream` and `stages.tune` both build on these.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cyto_ssrl import names, tracking
from cyto_ssrl.config import preset
from cyto_ssrl.data.pools import read_manifest
from cyto_ssrl.downstream.config import DOWNSTREAM_PRESETS, DownstreamConfig, TrainingSettings
from cyto_ssrl.downstream.features import cached_features, encode, feature_key, labelled_tiles
from cyto_ssrl.downstream.finetune import finetune, predict
from cyto_ssrl.downstream.probe import BestEpoch, EpochCallback, probe_scores, train_probe
from cyto_ssrl.downstream.tuning import tuned_blr
from cyto_ssrl.errors import CytoError
from cyto_ssrl.lineage import manifest_path, model_manifest
from cyto_ssrl.train import LoopConfig, absolute_lr

# Model-version tags every downstream run carries, so results can be grouped by how the backbone was pre-trained.
LINEAGE_TAGS = (
    "ratio",
    "ratio_r",
    "method",
    "backbone",
    "pool_digest",
    "pretrain_run_id",
    "pretrain_seed",
    "source",
    "baseline_for",
)


@dataclass
class Setup:
    """What every run of one call shares: the model version, its labelled tiles and the settings."""

    model_uri: str
    version: object  # mlflow ModelVersion
    manifest: Path
    downstream: pd.DataFrame  # labelled tiles of the downstream partition: budgets are drawn from these
    evaluation: pd.DataFrame
    cfg: DownstreamConfig
    preset_name: str
    _features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def img_size(self) -> int:
        return int(self.version.tags["img_size"])

    @property
    def tags(self) -> dict[str, str]:
        lineage = {key: self.version.tags[key] for key in LINEAGE_TAGS if key in self.version.tags}
        return {
            **lineage,
            "model_uri": self.model_uri,
            "model_name": self.version.name,
            "model_version": self.version.version,
            "model_label": self.label,
        }

    @property
    def label(self) -> str:
        """What the evaluated backbone is, e.g. mae-vit_tiny@1:100: the first part of every run name."""
        return names.version_label(self.version.tags)

    @property
    def ratio_params(self) -> dict[str, float]:
        """The pool's ratio as numbers, so the chart view (whose X axis takes params, not tags) can plot against
        it; an external baseline has ratio_r 0 and no log10."""
        r = int(self.version.tags.get("ratio_r", 0))
        return {"ratio_r": r, "log10_ratio": round(math.log10(r), 4)} if r else {"ratio_r": 0}

    def log_lineage(self) -> None:
        """The evaluated backbone as the run's model input (the UI's Models column)."""
        tracking.log_model_input(tracking.logged_model_id(self.version))

    @cached_property
    def backbone(self) -> torch.nn.Module:
        """The registered encoder, loaded once per call; fine-tuning trains copies of it."""
        return tracking.load_registered_model(self.version.name, self.version.version)

    def tiles(self, partition: str) -> pd.DataFrame:
        return self.downstream if partition == "downstream" else self.evaluation

    def features(self, partition: str) -> torch.Tensor:
        """Frozen features of a partition's labelled tiles, from the on-disk cache when it holds them."""
        if partition not in self._features:
            tiles = self.tiles(partition)
            key = feature_key(self.version, partition, tiles, self.img_size)
            feature_dir = self.cfg.feature_dir if self.cfg.cache_features else None

            def compute() -> torch.Tensor:
                return encode(self.backbone, tiles, self.img_size, self.cfg.eval_batch_size, self.cfg.num_workers)

            self._features[partition] = cached_features(key, compute, feature_dir)
        return self._features[partition]


def prepare(
    model_uri: str, preset_name: str = "tiny", manifest: str | None = None, seed: int = 0, **overrides
) -> Setup:
    """Resolve the model version and its manifest, and check the evaluation partition can be scored."""
    version = tracking.model_version(model_uri)
    missing = [tag for tag in ("ratio", "img_size") if tag not in version.tags]
    if missing:
        raise CytoError(
            f"{model_uri} (version {version.version}) has no {' or '.join(missing)} tag: "
            "register backbones through the pretrain stage"
        )
    cfg = preset(DOWNSTREAM_PRESETS, preset_name, seed=seed, **overrides)
    path = manifest_path(manifest) if manifest else model_manifest(model_uri, version)
    tiles = read_manifest(path)
    evaluation = labelled_tiles(tiles, "evaluation")
    if evaluation["y"].nunique() < 2:
        raise CytoError(
            f"the evaluation partition of {path} holds {evaluation['label'].iloc[0]} tiles only; "
            "SP, SE and AUC need both classes"
        )
    return Setup(model_uri, version, path, labelled_tiles(tiles, "downstream"), evaluation, cfg, preset_name)


def budget_loop(
    settings: TrainingSettings, budget: float, n_train: int, blr: float, lr: float | None, seed: int, num_workers: int
) -> LoopConfig:
    """The budget's batch size (never more than its training tiles), lr = blr x batch / 256 unless lr is given, and
    the epochs that give at least `min_steps` optimiser steps (only full batches train)."""
    batch = min(settings.batch_size(budget), n_train)
    return LoopConfig(
        epochs=max(settings.epochs, math.ceil(settings.min_steps / (n_train // batch))),
        batch_size=batch,
        lr=absolute_lr(blr, lr, batch),
        min_lr=settings.min_lr,
        warmup_epochs=settings.warmup_epochs,
        weight_decay=settings.weight_decay,
        grad_accum_steps=1,
        num_workers=num_workers,
        seed=seed,
    )


def train_on_split(
    setup: Setup,
    mode: str,
    train: pd.DataFrame,
    val: pd.DataFrame,
    loop: LoopConfig,
    on_epoch: EpochCallback | None = None,
) -> tuple[torch.nn.Module, BestEpoch]:
    """Train the mode's classifier on one budget's split (the evaluation partition is not touched); returns the
    classifier of the best validation epoch and the record of every epoch."""
    if mode == "linear":
        x = setup.features("downstream")
        y = torch.tensor(setup.downstream["y"].to_numpy())
        return train_probe(x[train.index], y[train.index], x[val.index], y[val.index], loop, on_epoch)
    return finetune(
        copy.deepcopy(setup.backbone), train, val, setup.img_size, loop, setup.cfg.eval_batch_size, on_epoch
    )


def evaluation_scores(setup: Setup, mode: str, model: torch.nn.Module) -> np.ndarray:
    """Probability of the positive class for every evaluation tile."""
    if mode == "linear":
        return probe_scores(model, setup.features("evaluation"))
    return predict(model, setup.evaluation, setup.img_size, setup.cfg.eval_batch_size, setup.cfg.num_workers)


def base_lr(setup: Setup, mode: str, budget: float, lr, storage: str | None = None) -> float:
    """The blr of a budget's training: the preset's, or with lr='tuned' the best of a finished tune study."""
    if lr != "tuned":
        return setup.cfg.training(mode).blr
    return tuned_blr(setup.version, mode, budget, storage)
