"""Representation analyses on frozen embeddings: k-NN sweep, k-means agreement, linear-SVM separability, t-SNE.

Every analysis is seeded, so two runs on the same embeddings give the same numbers and the same pictures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import accuracy_score, adjusted_mutual_info_score, adjusted_rand_score, f1_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from cyto_ssrl.downstream.metrics import METRIC_NAMES, binary_metrics, check_binary_labels, titled
from cyto_ssrl.errors import CytoError

SMALL_TSNE = 1000  # points; fewer run on one thread
TSNE_PCA_DIMS = 50


def knn_sweep(train_x, train_y, test_x, test_y, ks=(1, 5, 10, 20, 50)) -> pd.DataFrame:
    """Weighted F1 and accuracy of cosine k-NN for each k (Stegmüller et al. report weighted F1).

    A k larger than the training set cannot be fitted, so it is dropped rather than failing the whole sweep.
    """
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    usable = [int(k) for k in ks if 1 <= k <= len(train_x)]
    if not usable:
        raise CytoError(f"no k in {tuple(ks)} fits a k-NN training set of {len(train_x)} embeddings")
    rows = []
    for k in usable:
        # Brute force: the tree indexes do not support the cosine metric.
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(train_x, train_y)
        pred = knn.predict(test_x)
        rows.append(
            {
                "k": k,
                "weighted_f1": float(f1_score(test_y, pred, average="weighted", zero_division=0)),
                "acc": float(accuracy_score(test_y, pred)),
            }
        )
    return pd.DataFrame(rows, columns=["k", "weighted_f1", "acc"])


def kmeans_scores(x, y, n_clusters: int = 2, seed: int = 0) -> dict[str, float]:
    """How well unsupervised k-means clusters agree with the labels: AMI, ARI and purity (CCRL, Nakhli et al.)."""
    x, y = np.asarray(x), np.asarray(y).ravel()
    if len(x) < n_clusters:
        raise CytoError(f"k-means with {n_clusters} clusters needs at least {n_clusters} embeddings, got {len(x)}")
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)
    # Purity: each cluster votes for its majority label; the share of embeddings those votes get right.
    purity = contingency_matrix(y, clusters).max(axis=0).sum() / len(y)
    return {
        "ami": float(adjusted_mutual_info_score(y, clusters)),
        "ari": float(adjusted_rand_score(y, clusters)),
        "purity": float(purity),
    }


def svm_separability(x, y, folds: int = 5, seed: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """Six metrics of a standardised linear SVM under stratified k-fold CV (paper Table S17): mean, and per fold.

    Folds shrink to the smallest class count, so every test fold still holds both classes.
    """
    x, y = np.asarray(x), check_binary_labels(y)
    smallest = int(np.bincount(y).min())
    folds = min(folds, smallest)
    if folds < 2:
        raise CytoError(f"SVM cross-validation needs at least 2 embeddings of each class, the smallest has {smallest}")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    rows = []
    for fold, (train, test) in enumerate(splitter.split(x, y)):
        svm = make_pipeline(StandardScaler(), LinearSVC(C=1.0, max_iter=10_000, random_state=seed))
        svm.fit(x[train], y[train])
        # The decision function is a signed margin, not a probability: its class boundary is 0, not 0.5.
        scores = svm.decision_function(x[test])
        rows.append({"fold": fold, "n_test": len(test), **binary_metrics(y[test], scores, threshold=0.0)})
    per_fold = pd.DataFrame(rows, columns=["fold", "n_test", *METRIC_NAMES])
    return {name: float(per_fold[name].mean()) for name in METRIC_NAMES}, per_fold


def tsne_embedding(x, y, per_class: int = 1000, seed: int = 0) -> pd.DataFrame:
    """2-D t-SNE of up to `per_class` positives and `per_class` negatives (all when fewer; paper Fig. 6)."""
    x, y = np.asarray(x, dtype=float), check_binary_labels(y)
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [
            rng.choice(idx, size=min(per_class, len(idx)), replace=False)
            for idx in (np.flatnonzero(y == label) for label in (0, 1))
        ]
    )
    keep.sort()
    x, y = x[keep], y[keep]
    n = len(x)
    if x.shape[1] > TSNE_PCA_DIMS:
        # PCA first, as is standard for t-SNE: it removes noise dimensions and makes the neighbour search fast.
        x = PCA(n_components=min(TSNE_PCA_DIMS, n), random_state=seed).fit_transform(x)
    # t-SNE looks at 3 x perplexity neighbours, so a small sample needs perplexity <= (n - 1) / 3.
    perplexity = min(30.0, (n - 1) / 3)
    # A few hundred points on OpenMP threads: on a busy machine each of t-SNE's 1,000 steps waited for every
    # thread (54 s against 11 s on one thread for 276 points while other jobs ran).
    threads = 1 if n <= SMALL_TSNE else None
    with threadpool_limits(threads):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": y})


def plot_tsne(df: pd.DataFrame, subject: str = "") -> Figure:
    """t-SNE scatter, negatives and positives in two colours; `subject` (the backbone's label) in the title."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for label, name, color in ((0, "negative", "tab:blue"), (1, "positive", "tab:red")):
        part = df[df["label"] == label]
        ax.scatter(part["x"], part["y"], s=6, alpha=0.6, color=color, label=f"{name} (n={len(part)})", linewidths=0)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(titled("t-SNE of embeddings", subject))
    ax.legend(markerscale=3, loc="best")
    return fig


def plot_knn(df: pd.DataFrame, subject: str = "") -> Figure:
    """Weighted F1 against k on a log axis, each k ticked by its value; `subject` in the title."""
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(df["k"], df["weighted_f1"], marker="o")
    ax.set_xscale("log")
    ax.set_xticks(df["k"], [str(k) for k in df["k"]])
    ax.minorticks_off()
    ax.set_xlabel("k (neighbours, log scale)")
    ax.set_ylabel("weighted F1")
    ax.set_title(titled("k-NN on frozen embeddings (cosine)", subject))
    ax.grid(alpha=0.3)
    return fig
