"""The paper's six binary metrics (Acc, SP, SE, PR, F1, AUC) and the two figures that go with them.

Labels are 1 = positive (abnormal) and 0 = negative; scores are the probability of the positive class.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from cyto_ssrl.errors import CytoError

METRIC_NAMES = ("acc", "sp", "se", "pr", "f1", "auc")


def binary_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Acc, SP, SE, PR, F1 at `threshold` on `y_score`, and the threshold-free ROC AUC, as plain floats."""
    y_true = check_binary_labels(y_true)
    y_score = np.asarray(y_score, dtype=float).ravel()
    if len(y_score) != len(y_true):
        raise CytoError(f"{len(y_true)} evaluation labels but {len(y_score)} scores; they must pair up")
    (tn, fp), (fn, tp) = confusion(y_true, (y_score >= threshold).astype(int))
    se = _ratio(tp, tp + fn)
    pr = _ratio(tp, tp + fp)
    return {
        "acc": _ratio(tp + tn, len(y_true)),
        "sp": _ratio(tn, tn + fp),
        "se": se,
        "pr": pr,
        "f1": _ratio(2 * pr * se, pr + se),
        "auc": float(roc_auc_score(y_true, y_score)),
    }


def check_binary_labels(y) -> np.ndarray:
    """Labels as an int array of 0/1 holding both classes; anything else cannot give SP, SE or AUC."""
    y = np.asarray(y).ravel()
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise CytoError(f"evaluation labels must be 0 (negative) or 1 (positive), got {sorted(values)[:5]}")
    if len(values) < 2:
        raise CytoError(
            f"evaluation labels contain one class only ({len(y)} labels, all {sorted(values)}); AUC and SP/SE need both"
        )
    return y.astype(int)


def _ratio(num: float, den: float) -> float:
    # Zero division (e.g. no predicted positives for PR) gives 0.0, as scikit-learn's zero_division=0 does.
    return float(num / den) if den else 0.0


def confusion(y_true, y_pred) -> np.ndarray:
    """2x2 counts [[TN, FP], [FN, TP]], fixed to labels (0, 1) even when a class is never predicted."""
    return confusion_matrix(np.asarray(y_true).ravel(), np.asarray(y_pred).ravel(), labels=[0, 1])


def plot_confusion(cm, subject: str = "") -> Figure:
    """Counts with row percentages, so a small positive class stays readable next to a large negative one.
    `subject` (the run's name) goes into the title, so a figure seen on its own says what it shows."""
    cm = np.asarray(cm)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, label="count")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    for (i, j), count in np.ndenumerate(cm):
        # White text on the dark cells, black on the light ones.
        color = "white" if count > cm.max() / 2 else "black"
        ax.text(j, i, f"{count}\n{share[i, j]:.1%}", ha="center", va="center", color=color)
    ax.set_xticks([0, 1], ["negative", "positive"])
    ax.set_yticks([0, 1], ["negative", "positive"])
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(titled("Confusion matrix", subject))
    return fig


def plot_roc(y_true, y_score, subject: str = "") -> Figure:
    """ROC curve with the chance diagonal and the AUC in the legend; `subject` as in plot_confusion."""
    y_true = check_binary_labels(y_true)
    fpr, tpr, _ = roc_curve(y_true, y_score)
    auc = roc_auc_score(y_true, y_score)
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(titled("ROC curve", subject))
    ax.legend(loc="lower right")
    return fig


def titled(title: str, subject: str) -> str:
    return f"{title}\n{subject}" if subject else title
