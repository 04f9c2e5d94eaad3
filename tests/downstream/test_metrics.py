"""The six paper metrics against scikit-learn, on known confusion matrices; figures carry titles and labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from cyto_ssrl.downstream.metrics import METRIC_NAMES, binary_metrics, confusion, plot_confusion, plot_roc
from cyto_ssrl.errors import CytoError


def labels_from_counts(tp: int, fn: int, tn: int, fp: int, seed: int = 0):
    """Labels and scores whose confusion matrix at threshold 0.5 is exactly the given counts, in shuffled order."""
    y_true = np.array([1] * (tp + fn) + [0] * (tn + fp))
    y_pred = np.array([1] * tp + [0] * fn + [0] * tn + [1] * fp)
    rng = np.random.default_rng(seed)
    # Scores on the predicted side of 0.5 but otherwise random, so the AUC is not trivially 1.
    y_score = np.where(y_pred == 1, rng.uniform(0.5, 1.0, len(y_pred)), rng.uniform(0.0, 0.5, len(y_pred)))
    order = rng.permutation(len(y_true))
    return y_true[order], y_pred[order], y_score[order]


def sklearn_metrics(y_true, y_pred, y_score) -> dict[str, float]:
    return {
        "acc": accuracy_score(y_true, y_pred),
        "sp": recall_score(y_true, y_pred, pos_label=0, zero_division=0),
        "se": recall_score(y_true, y_pred, zero_division=0),
        "pr": precision_score(y_true, y_pred, zero_division=0),
        "f1": f1_score(y_true, y_pred, zero_division=0),
        "auc": roc_auc_score(y_true, y_score),
    }


def test_hand_computed_case():
    y_true, _, y_score = labels_from_counts(tp=30, fn=10, tn=50, fp=10)
    got = binary_metrics(y_true, y_score)
    assert tuple(got) == METRIC_NAMES
    assert all(type(v) is float for v in got.values())
    assert got["acc"] == pytest.approx(0.8)
    assert got["se"] == pytest.approx(0.75)
    assert got["sp"] == pytest.approx(50 / 60)
    assert got["pr"] == pytest.approx(0.75)
    assert got["f1"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "tp, fn, tn, fp",
    [(30, 10, 50, 10), (1, 99, 900, 0), (45, 5, 3, 47), (7, 3, 2, 8), (100, 0, 100, 0)],
)
def test_matches_sklearn(tp, fn, tn, fp):
    y_true, y_pred, y_score = labels_from_counts(tp, fn, tn, fp)
    np.testing.assert_array_equal(confusion(y_true, y_pred), [[tn, fp], [fn, tp]])
    got = binary_metrics(y_true, y_score)
    want = sklearn_metrics(y_true, y_pred, y_score)
    assert got == pytest.approx(want)


def test_zero_division_gives_zero():
    # Nothing predicted positive: PR has no denominator, and so F1 has none either.
    y_true, y_pred, y_score = labels_from_counts(tp=0, fn=20, tn=80, fp=0)
    got = binary_metrics(y_true, y_score)
    assert got["pr"] == 0.0 and got["f1"] == 0.0 and got["se"] == 0.0
    assert got["sp"] == 1.0 and got["acc"] == pytest.approx(0.8)
    assert got == pytest.approx(sklearn_metrics(y_true, y_pred, y_score))


def test_threshold_moves_the_cut():
    y_true = np.array([0, 0, 1, 1])
    y_score = np.array([0.1, 0.6, 0.7, 0.9])
    assert binary_metrics(y_true, y_score)["sp"] == 0.5
    assert binary_metrics(y_true, y_score, threshold=0.65)["sp"] == 1.0


def test_confusion_keeps_both_labels_when_one_is_never_predicted():
    np.testing.assert_array_equal(confusion([0, 0, 1], [0, 0, 0]), [[2, 0], [1, 0]])


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0]])
def test_one_class_raises(labels):
    with pytest.raises(CytoError, match="one class only"):
        binary_metrics(labels, np.linspace(0, 1, len(labels)))


def test_non_binary_labels_and_length_mismatch_raise():
    with pytest.raises(CytoError, match="0 \\(negative\\) or 1"):
        binary_metrics([0, 1, 2], [0.1, 0.5, 0.9])
    with pytest.raises(CytoError, match="must pair up"):
        binary_metrics([0, 1, 1], [0.1, 0.5])


def test_figures_are_titled_and_labelled():
    y_true, y_pred, y_score = labels_from_counts(tp=30, fn=10, tn=50, fp=10)
    ax = plot_confusion(confusion(y_true, y_pred)).axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    ax = plot_roc(y_true, y_score).axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert "AUC" in ax.get_legend().get_texts()[0].get_text()
