"""Representation analyses on synthetic embeddings whose answer is known: separated blobs, and pure noise."""

from __future__ import annotations

import numpy as np
import pytest

from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.downstream.representation import (
    kmeans_scores,
    knn_sweep,
    plot_knn,
    plot_tsne,
    svm_separability,
    tsne_embedding,
)
from cyto_ssrl.errors import CytoError


def blobs(n_neg: int = 150, n_pos: int = 150, dims: int = 64, seed: int = 0):
    """Two tight Gaussian blobs around opposite centres, so they separate by direction (cosine) and distance."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dims)
    centre *= 5 / np.linalg.norm(centre)
    x = np.vstack([rng.normal(-centre, 0.5, (n_neg, dims)), rng.normal(centre, 0.5, (n_pos, dims))])
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    return x, y


def noise(n: int = 300, dims: int = 32, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dims)), rng.integers(0, 2, n)


def test_knn_separates_blobs():
    x, y = blobs()
    df = knn_sweep(x[::2], y[::2], x[1::2], y[1::2])
    assert list(df.columns) == ["k", "weighted_f1", "acc"]
    assert list(df["k"]) == [1, 5, 10, 20, 50]
    assert (df["weighted_f1"] > 0.95).all() and (df["acc"] > 0.95).all()


def test_knn_drops_k_larger_than_training_set():
    x, y = blobs(10, 10)
    assert list(knn_sweep(x, y, x, y, ks=(1, 5, 10, 20, 50))["k"]) == [1, 5, 10, 20]
    with pytest.raises(CytoError, match="no k"):
        knn_sweep(x[:3], y[:3], x, y, ks=(5, 10))


def test_kmeans_recovers_blobs():
    x, y = blobs(200, 50)
    scores = kmeans_scores(x, y)
    assert set(scores) == {"ami", "ari", "purity"}
    assert scores["ari"] > 0.9 and scores["purity"] > 0.95 and scores["ami"] > 0.9


def test_kmeans_finds_nothing_in_noise():
    x, y = noise()
    scores = kmeans_scores(x, y)
    assert abs(scores["ari"]) < 0.05 and abs(scores["ami"]) < 0.05


def test_kmeans_is_seeded():
    x, y = noise()
    assert kmeans_scores(x, y, seed=3) == kmeans_scores(x, y, seed=3)


def test_svm_separates_blobs():
    x, y = blobs(120, 60)
    mean, per_fold = svm_separability(x, y)
    assert tuple(mean) == METRIC_NAMES
    assert len(per_fold) == 5 and list(per_fold.columns) == ["fold", "n_test", *METRIC_NAMES]
    assert per_fold["n_test"].sum() == len(y)
    assert mean["acc"] > 0.95 and mean["auc"] > 0.95
    assert mean["acc"] == pytest.approx(per_fold["acc"].mean())


def test_svm_on_noise_is_chance():
    x, y = noise()
    mean, _ = svm_separability(x, y)
    assert 0.3 < mean["auc"] < 0.7


def test_svm_folds_shrink_to_smallest_class_and_need_two():
    x, y = blobs(40, 3)
    _, per_fold = svm_separability(x, y, folds=5)
    assert len(per_fold) == 3
    with pytest.raises(CytoError, match="at least 2"):
        svm_separability(*blobs(40, 1))
    with pytest.raises(CytoError, match="one class only"):
        svm_separability(*blobs(40, 0))


def test_tsne_caps_each_class():
    x, y = blobs(80, 30, dims=64)
    df = tsne_embedding(x, y, per_class=50, seed=0)
    assert list(df.columns) == ["x", "y", "label"]
    counts = df["label"].value_counts()
    assert counts[0] == 50 and counts[1] == 30
    assert np.isfinite(df[["x", "y"]].to_numpy()).all()


def test_tsne_keeps_all_rows_when_fewer_and_is_seeded():
    x, y = blobs(6, 4, dims=80)
    df = tsne_embedding(x, y, per_class=1000, seed=2)
    assert len(df) == 10 and df["label"].sum() == 4
    assert df.equals(tsne_embedding(x, y, per_class=1000, seed=2))


def test_figures_are_titled_and_labelled():
    x, y = blobs(40, 40)
    ax = plot_knn(knn_sweep(x[::2], y[::2], x[1::2], y[1::2], ks=(1, 5, 10))).axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() == "weighted F1"
    assert ax.get_xscale() == "log"
    ax = plot_tsne(tsne_embedding(x, y, per_class=20)).axes[0]
    assert ax.get_title() and (ax.get_xlabel(), ax.get_ylabel()) == ("t-SNE 1", "t-SNE 2")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("negative") and legend[1].startswith("positive")
