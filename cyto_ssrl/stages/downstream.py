"""Stage 4 as runs: a registered backbone evaluated by linear probing, fine-tuning or representation analyses.

One parent run per call; under it one run per budget x resample (and one for the representation analyses), each
tagged with the model version's lineage (ratio, method, backbone, pool digest, pre-training run) and named by what it
holds (`mae-vit_tiny@1:100/linear-b5-r1`). Budgets are drawn from the `downstream` partition (train and validation);
every reported metric comes from the `evaluation` partition, scored once with the weights of the best validation
epoch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cyto_ssrl import names, tracking
from cyto_ssrl.checks import at_least, one_of
from cyto_ssrl.config import flatten
from cyto_ssrl.downstream.budgets import budget_seed, draw_budget
from cyto_ssrl.downstream.config import PAPER_BUDGETS, TRAINED_MODES
from cyto_ssrl.downstream.metrics import binary_metrics, confusion, plot_confusion, plot_roc
from cyto_ssrl.downstream.representation import (
    kmeans_scores,
    knn_sweep,
    plot_knn,
    plot_tsne,
    svm_separability,
    tsne_embedding,
)
from cyto_ssrl.downstream.setup import Setup, base_lr, budget_loop, evaluation_scores, prepare, train_on_split
from cyto_ssrl.names import budget_label

MODES = (*TRAINED_MODES, "representation")


def run_downstream(
    model_uri: str,
    mode: str = "linear",
    budgets=PAPER_BUDGETS,
    resamples: int = 5,
    preset_name: str = "tiny",
    lr: float | str | None = None,
    manifest: str | None = None,
    seed: int = 0,
    **overrides,
) -> str:
    """Evaluate a registered backbone; returns the parent run id. Overrides are DownstreamConfig fields.

    `lr`: None uses the preset's blr, a number is the absolute lr, "tuned" the best blr of a finished `tune` study
    for this model version, mode and budget. Every input is checked before any run starts.
    """
    one_of("mode", mode, MODES)
    at_least("resamples", resamples, 1)
    setup = prepare(model_uri, preset_name, manifest, seed, **overrides)
    trained = [] if mode == "representation" else list(budgets)
    for budget in trained:  # infeasible budgets fail here, before anything is logged
        draw_budget(setup.downstream, budget, 0, seed)
    blrs = {budget: base_lr(setup, mode, budget, lr) for budget in trained}
    params = {
        "model_uri": model_uri,
        "mode": mode,
        "budgets": ",".join(map(budget_label, budgets)),
        "resamples": resamples,
        "preset": preset_name,
        "lr": lr,
        "manifest": setup.manifest,
        "seed": seed,
        **setup.ratio_params,
        **flatten(setup.cfg),
    }
    with tracking.stage_run("downstream", params, setup.tags, run_name=f"{setup.label}/{mode}") as parent:
        tracking.set_tags({"manifest": setup.manifest})
        setup.log_lineage()
        tracking.log_dataset(setup.downstream, setup.manifest, name="downstream", context="train")
        tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        for budget in trained:
            for resample in range(resamples):
                budget_run(setup, mode, budget, resample, blrs[budget], None if lr in (None, "tuned") else lr)
        if mode in ("linear", "representation"):
            representation_run(setup)
    return parent.info.run_id


def budget_run(
    setup: Setup, mode: str, budget: float, resample: int, blr: float, lr: float | None, run_id: str | None = None
) -> None:
    """One budget x resample: train on its split, score the evaluation partition; one run (a study cell)."""
    cfg = setup.cfg
    settings = cfg.training(mode)
    train, val = draw_budget(setup.downstream, budget, resample, cfg.seed)
    run_seed = budget_seed(cfg.seed, budget, resample)
    loop = budget_loop(settings, budget, len(train), blr, lr, run_seed, cfg.num_workers)
    params = {
        "model_uri": setup.model_uri,
        "mode": mode,
        "budget": budget_label(budget),
        "resample": resample,
        "preset": setup.preset_name,
        "seed": cfg.seed,
        "run_seed": run_seed,
        "blr": blr,
        "lr": loop.lr,
        "lr_given": lr is not None,
        "batch_size": loop.batch_size,
        "epochs": loop.epochs,
        "warmup_epochs": loop.warmup_epochs,
        "weight_decay": loop.weight_decay,
        "min_lr": loop.min_lr,
        "n_train": len(train),
        "n_val": len(val),
        "n_eval": len(setup.evaluation),
        **setup.ratio_params,
    }
    name = names.budget_run(setup.label, mode, budget, resample)
    system_metrics = mode == "finetune"
    with (
        tracking.stage_run(
            "downstream", params, setup.tags, run_name=name, run_id=run_id, system_metrics=system_metrics
        ),
        tempfile.TemporaryDirectory() as tmp,
    ):
        setup.log_lineage()
        draw = f"b{budget_label(budget)}-r{resample}"
        tracking.log_dataset(train, setup.manifest, name=f"train-{draw}", context="train")
        tracking.log_dataset(val, setup.manifest, name=f"val-{draw}", context="validation")
        evaluation = tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        split = pd.concat([train.assign(split="train"), val.assign(split="val")])[["tile_id", "label", "split"]]
        tracking.log_table(split, Path(tmp) / "budget_split.csv")
        curve: list[tuple[int, dict]] = []
        model, best = train_on_split(setup, mode, train, val, loop, on_epoch=lambda *point: curve.append(point))
        tracking.log_curve(curve)
        scores = evaluation_scores(setup, mode, model)
        _log_evaluation(setup, setup.evaluation["y"].to_numpy(), scores, evaluation, name)
        tracking.log_metrics({"train/best_epoch": best.epoch, "train/best_val_acc": best.val_acc})


def _log_evaluation(setup: Setup, y: np.ndarray, scores: np.ndarray, dataset, subject: str) -> None:
    """The six metrics, filed under the evaluated backbone and the evaluation dataset too, and the confusion
    matrix and ROC as images the chart view compares across runs."""
    metrics = binary_metrics(y, scores)
    tracking.log_metrics(
        {f"{names.EVAL}{name}": value for name, value in metrics.items()},
        model_id=tracking.logged_model_id(setup.version),
        dataset=dataset,
    )
    tracking.log_image(plot_confusion(confusion(y, scores >= 0.5), subject), "confusion_matrix")
    tracking.log_image(plot_roc(y, scores, subject), "roc")


def representation_run(setup: Setup, run_id: str | None = None) -> None:
    """k-NN (fitted on the downstream partition), k-means, linear-SVM and t-SNE on frozen evaluation features."""
    cfg = setup.cfg
    train_x, eval_x = setup.features("downstream").numpy(), setup.features("evaluation").numpy()
    train_y, eval_y = setup.downstream["y"].to_numpy(), setup.evaluation["y"].to_numpy()
    params = {
        "model_uri": setup.model_uri,
        "mode": "representation",
        "preset": setup.preset_name,
        "seed": cfg.seed,
        "knn_ks": cfg.knn_ks,
        "svm_folds": cfg.svm_folds,
        "tsne_per_class": cfg.tsne_per_class,
        "n_train": len(train_x),
        "n_eval": len(eval_x),
        **setup.ratio_params,
    }
    name = names.representation_run(setup.label)
    with (
        tracking.stage_run("downstream", params, setup.tags, run_name=name, run_id=run_id),
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        setup.log_lineage()
        tracking.log_dataset(setup.downstream, setup.manifest, name="downstream", context="train")
        tracking.log_dataset(setup.evaluation, setup.manifest, name="evaluation", context="evaluation")
        knn = knn_sweep(train_x, train_y, eval_x, eval_y, cfg.knn_ks)
        best = knn.loc[knn["weighted_f1"].idxmax()]
        kmeans = kmeans_scores(eval_x, eval_y, seed=cfg.seed)
        svm, folds = svm_separability(eval_x, eval_y, cfg.svm_folds, cfg.seed)
        tsne = tsne_embedding(eval_x, eval_y, cfg.tsne_per_class, cfg.seed)
        scores = {
            "knn_best_weighted_f1": best["weighted_f1"],
            "knn_best_k": best["k"],
            **{f"kmeans_{k}": v for k, v in kmeans.items()},
            **{f"svm_{k}": v for k, v in svm.items()},
        }
        tracking.log_metrics({f"{names.REPRESENTATION}{key}": value for key, value in scores.items()})
        tracking.log_table(knn, folder / "knn.csv")
        tracking.log_ui_table(knn, "knn.json")
        tracking.log_figure(plot_knn(knn, name), folder / "knn.png")
        tracking.log_table(folds, folder / "svm_folds.csv")
        tracking.log_ui_table(folds, "svm_folds.json")
        tracking.log_table(tsne, folder / "tsne.csv")
        tracking.log_figure(plot_tsne(tsne, name), folder / "tsne.png")
