"""Fake studies shaped like real ones: metric values come from `metric_value`, so every expected number is computed
by hand from it."""

from __future__ import annotations

import math

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from cyto_ssrl.downstream.metrics import METRIC_NAMES

METHODS = {"mae": "vit_tiny", "simclr": "resnet18"}  # only vit_tiny has an external baseline
MODES = ("linear", "finetune")
BUDGETS = (100.0, 10.0)
RATIOS = (1, 10, 100)
RESAMPLES = (0, 1, 2)


def metric_value(metric: str, method: str, mode: str, budget: float, r: int, resample: int) -> float:
    """Falls with log10(r) and with fewer labels; resample noise differs between ratios, so pairs differ."""
    base = {"acc": 0.90, "sp": 0.92, "se": 0.85, "pr": 0.88, "f1": 0.86, "auc": 0.95}[metric]
    shift = 0.02 * (mode == "finetune") - 0.04 * (budget < 100) - 0.01 * (method == "simclr")
    pretraining = -0.06 if r == 0 else -0.03 * math.log10(r)  # r = 0: the external baseline
    noise = 0.01 * ((3 * resample + 2 * r % 7) % 5 - 2)
    return base + shift + pretraining + noise


def values(metric: str, method: str, mode: str, budget: float, r: int) -> np.ndarray:
    return np.array([metric_value(metric, method, mode, budget, r, resample) for resample in RESAMPLES])


def log_run(
    client: MlflowClient, experiment: str, tags: dict, params: dict, metrics: dict, status: str = "FINISHED"
) -> None:
    run_id = client.create_run(experiment, tags={"stage": "downstream", **tags}).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run_id, status)


def budget_run(client, experiment, study, method, backbone, r, mode, budget, resample, status="FINISHED", **metrics):
    ratio = "external" if r == 0 else f"1:{r}"
    tags = {
        "study": study,
        "method": method,
        "backbone": backbone,
        "ratio": ratio,
        "ratio_r": r,
        "model_name": f"cyto-{method}-{backbone}",
        "model_version": "1",
    }
    params = {"mode": mode, "budget": f"{budget:g}", "resample": resample, "seed": 0}
    metrics = metrics or {f"eval/{m}": metric_value(m, method, mode, budget, r, resample) for m in METRIC_NAMES}
    log_run(client, experiment, tags, params, metrics, status)


def make_study(client: MlflowClient, experiment: str) -> None:
    """Study s1 (two methods, one with an external baseline), decoys it must ignore, and a one-ratio study s2."""
    for method, backbone in METHODS.items():
        for mode in MODES:
            for budget in BUDGETS:
                for resample in RESAMPLES:
                    for r in RATIOS:
                        budget_run(client, experiment, "s1", method, backbone, r, mode, budget, resample)
                    if backbone == "vit_tiny":
                        budget_run(client, experiment, "s1", "external", backbone, 0, mode, budget, resample)
    # A parent run, a representation run and a pre-training run of s1 carry no budget results.
    log_run(client, experiment, {"study": "s1", "method": "mae"}, {"mode": "linear", "budgets": "100,10"}, {})
    log_run(
        client,
        experiment,
        {"study": "s1", "method": "mae", "backbone": "vit_tiny", "ratio": "1:10", "ratio_r": 10},
        {"mode": "representation"},
        {"representation/knn_best_weighted_f1": 0.8, "representation/kmeans_ami": 0.3},
    )
    log_run(client, experiment, {"study": "s1", "stage": "pretrain"}, {"budget": "100"}, {"eval/acc": 0.1})
    # Failed runs: one repeats a finished cell with a wild value, one is at a ratio nothing finished at.
    budget_run(client, experiment, "s1", "mae", "vit_tiny", 1, "linear", 100.0, 0, "FAILED", **{"eval/acc": 0.0})
    budget_run(client, experiment, "s1", "mae", "vit_tiny", 1000, "linear", 100.0, 0, "FAILED", **{"eval/acc": 0.5})
    for budget in (100.0, 1.0):
        for resample in (0, 1):
            budget_run(client, experiment, "s2", "mae", "vit_tiny", 5, "linear", budget, resample)


def analysis_runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'analysis'")


def simclr_linear_b10_at_1_100(stats):
    """The row of a drops table the tests check by hand: SimCLR's linear probe at 10 %, pool 1:100."""
    wanted = (stats["method"] == "simclr") & (stats["mode"] == "linear") & (stats["budget"] == 10)
    return stats[wanted & (stats["ratio"] == "1:100")].iloc[0]
