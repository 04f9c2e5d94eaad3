"""Linear probing on cached features (MAE's probe), and the best-epoch selection that fine-tuning shares.

The probe is a tiny head on fixed in-memory tensors, so it trains in plain torch: the Accelerate loop
(`cyto_ssrl.train.fit`) is for networks fed from image loaders. Its lr follows the same schedule (`lr_at`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cyto_ssrl.errors import CytoError
from cyto_ssrl.train import LoopConfig, lr_at

# Called after every epoch with {"train/val_acc": ..., "train/loss": ...}: logs the curve, or reports to an Optuna
# trial.
EpochCallback = Callable[[int, dict[str, float]], None]
VAL_ACC = "train/val_acc"
# Training features: a tensor, or a function called every epoch that returns them. The function lets
# benchmarks/probe_grid.py re-encode the images every epoch, the baseline the feature cache is timed against.
TrainFeatures = torch.Tensor | Callable[[], torch.Tensor]


def accuracy(scores: np.ndarray, y) -> float:
    return float(np.mean((np.asarray(scores) >= 0.5) == np.asarray(y)))


def positive_scores(logits: torch.Tensor) -> np.ndarray:
    """Probability of the positive class (label 1)."""
    return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()


class BestEpoch:
    """Validation accuracy after each epoch; keeps a copy of the weights of the best (the latest on ties).

    Small budgets validate on a handful of tiles, so accuracies tie often; among equals the later epoch has
    trained longer, where the earliest is often the barely trained head that predicts one class.
    """

    def __init__(self, model: nn.Module, on_epoch: EpochCallback | None = None):
        self.model = model
        self.on_epoch = on_epoch
        self.val_accs: list[float] = []
        self.epoch = -1
        self.state: dict | None = None

    @property
    def val_acc(self) -> float:
        return self.val_accs[self.epoch]

    def update(self, epoch: int, val_acc: float, train_loss: float) -> None:
        self.val_accs.append(val_acc)
        if self.state is None or val_acc >= self.val_acc:
            self.epoch = epoch
            self.state = copy.deepcopy(self.model.state_dict())
        if self.on_epoch is not None:
            self.on_epoch(epoch, {VAL_ACC: val_acc, "train/loss": train_loss})

    def restore(self) -> nn.Module:
        self.model.load_state_dict(self.state)
        return self.model.eval()


def linear_head(n_features: int) -> nn.Sequential:
    """MAE's linear probe: BatchNorm without affine parameters normalises the features, then one Linear layer."""
    return nn.Sequential(nn.BatchNorm1d(n_features, affine=False), nn.Linear(n_features, 2))


@torch.no_grad()
def probe_scores(head: nn.Module, features: torch.Tensor) -> np.ndarray:
    head.eval()
    return positive_scores(head(features))


def train_probe(
    train_x: TrainFeatures,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    loop: LoopConfig,
    on_epoch: EpochCallback | None = None,
) -> tuple[nn.Module, BestEpoch]:
    """SGD (momentum 0.9) on the head for loop.epochs; returns the head of the best validation epoch."""
    with one_thread():
        return _train_probe(train_x, train_y, val_x, val_y, loop, on_epoch)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread: a probe's ops are on a few thousand numbers, where a second thread gains nothing, and
    on a busy machine each op waited for it (a 200-step probe took 60 s instead of 1 s while other jobs ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train_probe(train_x, train_y, val_x, val_y, loop: LoopConfig, on_epoch: EpochCallback | None):
    torch.manual_seed(loop.seed)
    head = linear_head(val_x.shape[1])  # from val_x: train_x may be a function
    optimizer = torch.optim.SGD(head.parameters(), lr=loop.lr, momentum=0.9, weight_decay=loop.weight_decay)
    order_rng = torch.Generator().manual_seed(loop.seed)
    # Only full batches: BatchNorm cannot normalise a last batch of one.
    steps = len(train_y) // loop.batch_size
    best = BestEpoch(head, on_epoch)
    for epoch in range(loop.epochs):
        epoch_x = train_x() if callable(train_x) else train_x
        head.train()
        order = torch.randperm(len(train_y), generator=order_rng)
        total = 0.0
        for i in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch + i / steps, loop)
            batch = order[i * loop.batch_size : (i + 1) * loop.batch_size]
            loss = F.cross_entropy(head(epoch_x[batch]), train_y[batch])
            if not torch.isfinite(loss):
                raise CytoError(f"probe loss is {loss.item()} at epoch {epoch} step {i}; lower the lr")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        best.update(epoch, accuracy(probe_scores(head, val_x), val_y), total / steps)
    return best.restore(), best
