"""Stage 4 as runs: one registered backbone evaluated by linear probing, fine-tuning or representation analyses.

One parent run per call; under it one run per budget x resample (and one for the analyses), each tagged with the
model version's lineage (ratio, method, backbone, pool digest, pre-training run), so runs are found by tags:

    mlflow.search_runs(filter_string="tags.method='mae' and tags.ratio='1:100' and params.budget='1'")

Budgets are drawn from the `downstream` partition (train and validation); every reported metric comes from the
`evaluation` partition, scored once with the weights of the best validation epoch.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cyto_ssrl import names, tracking
from cyto_ssrl.config import flatten, preset
from cyto_ssrl.data.pools import read_manifest
from cyto_ssrl.downstream.analyses import (kmeans_scores, knn_sweep, plot_knn, plot_tsne, svm_separability,
                                           tsne_embedding)  # fmt: skip
from cyto_ssrl.downstream.budgets import budget_label, budget_seed, draw_budget
from cyto_ssrl.downstream.config import (DOWNSTREAM_PRESETS, PAPER_BUDGETS, TRAINED_MODES, DownstreamConfig,
                                         TrainingSettings)
from cyto_ssrl.downstream.features import cached_features, encode, feature_key, labelled_tiles
from cyto_ssrl.downstream.finetune import finetune, predict
from cyto_ssrl.downstream.metrics import binary_metrics, confusion, plot_confusion, plot_roc
from cyto_ssrl.downstream.probe import BestEpoch, EpochCallback, probe_scores, train_probe
from cyto_ssrl.errors import CytoError
from cyto_ssrl.stages import resolve_manifest
from cyto_ssrl.train import LoopConfig, absolute_lr

MODES = (*TRAINED_MODES, "analyses")
# Model-version tags every downstream run carries, so results can be grouped by how the backbone was pre-trained.
LINEAGE_TAGS = ("ratio", "ratio_r", "method", "backbone", "pool_digest", "pretrain_run_id", "pretrain_seed", "source",
                "baseline_for")


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
        return {**lineage, "model_uri": self.model_uri, "model_name": self.version.name,
                "model_version": self.version.version, "model_label": self.label}  # fmt: skip

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


def prepare(model_uri: str, preset_name: str = "tiny", manifest: str | None = None, seed: int = 0,
            **overrides) -> Setup:  # fmt: skip
    """Resolve the model version and its manifest, and check the evaluation partition can be scored."""
    version = tracking.model_version(model_uri)
    missing = [tag for tag in ("ratio", "img_size") if tag not in version.tags]
    if missing:
        raise CytoError(f"{model_uri} (version {version.version}) has no {' or '.join(missing)} tag: "
                        "register backbones through the pretrain stage")  # fmt: skip
    cfg = preset(DOWNSTREAM_PRESETS, preset_name, seed=seed, **overrides)
    path = resolve_manifest(manifest) if manifest else lineage_manifest(model_uri, version)
    tiles = read_manifest(path)
    evaluation = labelled_tiles(tiles, "evaluation")
    if evaluation["y"].nunique() < 2:
        raise CytoError(f"the evaluation partition of {path} holds {evaluation['label'].iloc[0]} tiles only; "
                        "SP, SE and AUC need both classes")  # fmt: skip
    return Setup(model_uri, version, path, labelled_tiles(tiles, "downstream"), evaluation, cfg, preset_name)


def lineage_manifest(model_uri: str, version) -> Path:
    """Model version -> its pre-training run -> the pool -> the pools run that drew it -> the tile manifest."""
    run_id = version.tags.get("pretrain_run_id")
    manifest = tracking.pool_manifest(tracking.run_tags(run_id).get("pool_path")) if run_id else None
    if not manifest:
        raise CytoError(f"cannot trace the tile manifest of {model_uri} through its pre-training pool; "
                        "pass manifest")  # fmt: skip
    return Path(manifest)


def loop_config(settings: TrainingSettings, budget: float, n_train: int, blr: float, lr: float | None, seed: int,
                num_workers: int) -> LoopConfig:  # fmt: skip
    """The budget's batch size (never more than its training tiles) and lr = blr x batch / 256 unless lr is given."""
    batch = min(settings.batch_size(budget), n_train)
    return LoopConfig(epochs=settings.epochs, batch_size=batch, lr=absolute_lr(blr, lr, batch),
                      min_lr=settings.min_lr, warmup_epochs=settings.warmup_epochs,
                      weight_decay=settings.weight_decay, grad_accum_steps=1, num_workers=num_workers,
                      seed=seed)  # fmt: skip


def train_on_split(setup: Setup, mode: str, train: pd.DataFrame, val: pd.DataFrame, loop: LoopConfig,
                   on_epoch: EpochCallback | None = None) -> tuple[torch.nn.Module, BestEpoch]:  # fmt: skip
    """Train the mode's classifier on one budget's split (the evaluation partition is not touched); returns the
    classifier of the best validation epoch and the record of every epoch."""
    if mode == "linear":
        x = setup.features("downstream")
        y = torch.tensor(setup.downstream["y"].to_numpy())
        return train_probe(x[train.index], y[train.index], x[val.index], y[val.index], loop, on_epoch)
    return finetune(copy.deepcopy(setup.backbone), train, val, setup.img_size, loop, setup.cfg.eval_batch_size,
                    on_epoch)  # fmt: skip


def evaluation_scores(setup: Setup, mode: str, model: torch.nn.Module) -> np.ndarray:
    """Probability of the positive class for every evaluation tile."""
    if mode == "linear":
        return probe_scores(model, setup.features("evaluation"))
    return predict(model, setup.evaluation, setup.img_size, setup.cfg.eval_batch_size, setup.cfg.num_workers)


def parse_lr(text: str | None) -> float | str | None:
    """'' -> None (the preset's blr), 'tuned' -> the tuned blr, a number -> that absolute lr."""
    if text in (None, "", "none", "None"):
        return None
    if text == "tuned":
        return "tuned"
    try:
        return float(text)
    except ValueError:
        raise CytoError(f"lr {text!r} is neither a number nor 'tuned'") from None


def run_downstream(model_uri: str, mode: str = "linear", budgets=PAPER_BUDGETS, resamples: int = 5,
                   preset_name: str = "tiny", lr: float | str | None = None, manifest: str | None = None,
                   seed: int = 0, **overrides) -> str:  # fmt: skip
    """Evaluate a registered backbone; returns the parent run id. Overrides are DownstreamConfig fields.

    `lr`: None uses the preset's blr, a number is the absolute lr, "tuned" the best blr of a finished `tune` study
    for this model version, mode and budget. Every input is checked before any run starts.
    """
    if mode not in MODES:
        raise CytoError(f"unknown mode {mode!r}; choose one of {'|'.join(MODES)}")
    if resamples < 1:
        raise CytoError(f"resamples must be at least 1, got {resamples}")
    if isinstance(lr, str) and lr != "tuned":
        raise CytoError(f"lr {lr!r} is neither a number nor 'tuned'")
    setup = prepare(model_uri, preset_name, manifest, seed, **overrides)
    trained = [] if mode == "analyses" else list(budgets)
    for budget in trained:  # infeasible budgets fail here, before anything is logged
        draw_budget(setup.downstream, budget, 0, seed)
    blrs = {budget: base_lr(setup, mode, budget, lr) for budget in trained}
    params = {"model_uri": model_uri, "mode": mode, "budgets": ",".join(map(budget_label, budgets)),
              "resamples": resamples, "preset": preset_name, "lr": lr, "manifest": setup.manifest, "seed": seed,
              **setup.ratio_params, **flatten(setup.cfg)}  # fmt: skip
    with tracking.stage_run("downstream", params, setup.tags, run_name=f"{setup.label}/{mode}") as parent:
        tracking.set_tags({"manifest": setup.manifest})
        setup.log_lineage()
        tracking.log_dataset(setup.downstream, setup.manifest, name="downstream", context="train")
        tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        for budget in trained:
            for resample in range(resamples):
                budget_run(setup, mode, budget, resample, blrs[budget], None if lr in (None, "tuned") else lr)
        if mode in ("linear", "analyses"):
            analyses_run(setup)
    return parent.info.run_id


def base_lr(setup: Setup, mode: str, budget: float, lr, storage: str | None = None) -> float:
    """The blr of a budget's training: the preset's, or with lr='tuned' the best of a finished tune study."""
    if lr != "tuned":
        return setup.cfg.training(mode).blr
    from cyto_ssrl.downstream.tune import tuned_blr  # tune builds on this module

    return tuned_blr(setup.version, mode, budget, storage)


def budget_run(setup: Setup, mode: str, budget: float, resample: int, blr: float, lr: float | None) -> None:
    """One budget x resample: train on its split, score the evaluation partition; one run (a study cell)."""
    cfg = setup.cfg
    settings = cfg.training(mode)
    train, val = draw_budget(setup.downstream, budget, resample, cfg.seed)
    run_seed = budget_seed(cfg.seed, budget, resample)
    loop = loop_config(settings, budget, len(train), blr, lr, run_seed, cfg.num_workers)
    params = {"model_uri": setup.model_uri, "mode": mode, "budget": budget_label(budget), "resample": resample,
              "preset": setup.preset_name, "seed": cfg.seed, "run_seed": run_seed, "blr": blr, "lr": loop.lr,
              "lr_given": lr is not None, "batch_size": loop.batch_size, "epochs": loop.epochs,
              "warmup_epochs": loop.warmup_epochs, "weight_decay": loop.weight_decay, "min_lr": loop.min_lr,
              "n_train": len(train), "n_val": len(val), "n_eval": len(setup.evaluation),
              **setup.ratio_params}  # fmt: skip
    name = names.budget_run(setup.label, mode, budget, resample)
    with tracking.stage_run("downstream", params, setup.tags, run_name=name, system_metrics=mode == "finetune"), \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        setup.log_lineage()
        draw = f"b{budget_label(budget)}-r{resample}"
        tracking.log_dataset(train, setup.manifest, name=f"train-{draw}", context="train")
        tracking.log_dataset(val, setup.manifest, name=f"val-{draw}", context="validation")
        evaluation = tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        split = pd.concat([train.assign(split="train"), val.assign(split="val")])[["tile_id", "label", "split"]]
        tracking.log_table(split, Path(tmp) / "budget_split.csv")
        model, best = train_on_split(setup, mode, train, val, loop, on_epoch=log_epoch)
        scores = evaluation_scores(setup, mode, model)
        _log_evaluation(setup, setup.evaluation["y"].to_numpy(), scores, evaluation, name)
        tracking.log_metrics({"train/best_epoch": best.epoch, "train/best_val_acc": best.val_acc})


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    """One epoch's train/* metrics (BestEpoch's callback)."""
    tracking.log_metrics(metrics, step=epoch)


def _log_evaluation(setup: Setup, y: np.ndarray, scores: np.ndarray, dataset, subject: str) -> None:
    """The six metrics, filed under the evaluated backbone and the evaluation dataset too, and the confusion
    matrix and ROC as images the chart view compares across runs."""
    metrics = binary_metrics(y, scores)
    tracking.log_metrics({f"{names.EVAL}{name}": value for name, value in metrics.items()},
                         model_id=tracking.logged_model_id(setup.version), dataset=dataset)  # fmt: skip
    tracking.log_image(plot_confusion(confusion(y, scores >= 0.5), subject), "confusion_matrix")
    tracking.log_image(plot_roc(y, scores, subject), "roc")


def analyses_run(setup: Setup) -> None:
    """k-NN (fitted on the downstream partition), k-means, linear-SVM and t-SNE on frozen evaluation features."""
    cfg = setup.cfg
    train_x, eval_x = setup.features("downstream").numpy(), setup.features("evaluation").numpy()
    train_y, eval_y = setup.downstream["y"].to_numpy(), setup.evaluation["y"].to_numpy()
    params = {"model_uri": setup.model_uri, "mode": "analyses", "preset": setup.preset_name, "seed": cfg.seed,
              "knn_ks": cfg.knn_ks, "svm_folds": cfg.svm_folds, "tsne_per_class": cfg.tsne_per_class,
              "n_train": len(train_x), "n_eval": len(eval_x), **setup.ratio_params}  # fmt: skip
    name = names.analyses_run(setup.label)
    with tracking.stage_run("downstream", params, setup.tags, run_name=name), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        setup.log_lineage()
        tracking.log_dataset(setup.downstream, setup.manifest, name="downstream", context="train")
        tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        knn = knn_sweep(train_x, train_y, eval_x, eval_y, cfg.knn_ks)
        best = knn.loc[knn["weighted_f1"].idxmax()]
        kmeans = kmeans_scores(eval_x, eval_y, seed=cfg.seed)
        svm, folds = svm_separability(eval_x, eval_y, cfg.svm_folds, cfg.seed)
        tsne = tsne_embedding(eval_x, eval_y, cfg.tsne_per_class, cfg.seed)
        scores = {"knn_best_weighted_f1": best["weighted_f1"], "knn_best_k": best["k"],
                  **{f"kmeans_{k}": v for k, v in kmeans.items()}, **{f"svm_{k}": v for k, v in svm.items()}}
        tracking.log_metrics({f"{names.REPRESENTATION}{key}": value for key, value in scores.items()})
        tracking.log_table(knn, folder / "knn.csv")
        tracking.log_ui_table(knn, "knn.json")
        tracking.log_figure(plot_knn(knn, name), folder / "knn.png")
        tracking.log_table(folds, folder / "svm_folds.csv")
        tracking.log_ui_table(folds, "svm_folds.json")
        tracking.log_table(tsne, folder / "tsne.csv")
        tracking.log_figure(plot_tsne(tsne, name), folder / "tsne.png")
