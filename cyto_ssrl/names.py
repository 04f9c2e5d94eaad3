"""What runs, registered models and logged models are called, in one place, so the MLflow UI reads by name.

A backbone's label says what was pre-trained on what: `mae-vit_tiny@1:100` (with `-s1` for pre-training seed 1),
or `external-resnet50-imagenet` for a baseline from a weights file. Runs that evaluate it are named under it:
`mae-vit_tiny@1:100/linear-b5-r1`, `representation/mae-vit_tiny@1:100`.
"""

from __future__ import annotations

import re
from pathlib import Path

EXTERNAL = "external"
# Metric sections: the MLflow UI groups metrics by the part before '/'.
EVAL = "eval/"  # scored on the evaluation partition
REPRESENTATION = "representation/"  # k-NN, k-means and SVM on frozen features


def budget_label(budget: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5': how a budget is written in params, names and study names."""
    return f"{budget:g}"


def registered_model(method: str, backbone: str) -> str:
    """One registered model per method and backbone, e.g. cyto-mae-vit_tiny (a version per pre-training run)."""
    return f"cyto-{method}-{backbone}"


def pretrained_label(method: str, backbone: str, ratio: str, seed: int | str = 0) -> str:
    return f"{method}-{backbone}@{ratio}" + (f"-s{seed}" if str(seed) not in ("", "0") else "")


def external_label(backbone: str, source: str) -> str:
    return f"{EXTERNAL}-{backbone}-{Path(source).stem}"


def version_label(tags: dict[str, str]) -> str:
    """The label of a registered version, from its tags."""
    if tags.get("method") == EXTERNAL:
        return external_label(tags["backbone"], tags.get("source", "weights"))
    return pretrained_label(tags["method"], tags["backbone"], tags["ratio"], tags.get("pretrain_seed", ""))


def logged_model_name(label: str) -> str:
    """A label as MLflow allows a logged model's name: mae-vit_tiny@1:100 -> mae-vit_tiny-r100."""
    return re.sub(r"[/:.%\"'@]", "-", label.replace("@1:", "-r"))


def budget_run(label: str, mode: str, budget: float, resample: int) -> str:
    return f"{label}/{mode}-b{budget_label(budget)}-r{resample}"


def tune_run(label: str, mode: str, budget: float) -> str:
    return f"{label}/tune-{mode}-b{budget_label(budget)}"


def representation_run(label: str) -> str:
    return f"representation/{label}"
