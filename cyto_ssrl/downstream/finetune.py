"""End-to-end fine-tuning: backbone + Linear head, trained by the same Accelerate loop as pre-training.

`Classifier(batch)` returns the cross-entropy loss of a batch (images, labels), which is all `train.fit` asks of
a model. The epoch with the best validation accuracy is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from cyto_ssrl.data.transforms import eval_transform
from cyto_ssrl.downstream.features import LabelledImages, eval_loader
from cyto_ssrl.downstream.probe import BestEpoch, EpochCallback, accuracy, positive_scores
from cyto_ssrl.train import LoopConfig, fit, make_loader, stage_accelerator


class Classifier(nn.Module):
    """A backbone mapping images to features, and a Linear layer to the two classes."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 2)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def forward(self, batch) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.logits(images), labels)


def train_transform(img_size: int) -> v2.Compose:
    """The evaluation preprocessing plus flips and quarter turns: unlike crops, they keep every cell in view, so a
    positive tile stays positive."""
    turns = [v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]
    return v2.Compose(
        [eval_transform(img_size), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomChoice(turns)]
    )


@torch.no_grad()
def predict(model: Classifier, tiles: pd.DataFrame, img_size: int, batch_size: int, num_workers: int) -> np.ndarray:
    """Probability of the positive class for each tile, in order."""
    model.eval()
    device = next(model.parameters()).device  # where accelerator.prepare put it
    loader = eval_loader(tiles, img_size, batch_size, num_workers)
    return np.concatenate([positive_scores(model.logits(images.to(device))) for images, _ in loader])


def finetune(
    backbone: nn.Module,
    train: pd.DataFrame,
    val: pd.DataFrame,
    img_size: int,
    loop: LoopConfig,
    eval_batch_size: int = 64,
    on_epoch: EpochCallback | None = None,
) -> tuple[Classifier, BestEpoch]:
    """Train backbone and head with AdamW on `train`; returns the model of the best validation epoch."""
    accelerator = stage_accelerator()  # full precision, whatever an earlier stage of this process asked for
    set_seed(loop.seed)
    model = Classifier(backbone)
    loader = make_loader(LabelledImages(train, train_transform(img_size)), loop, accelerator)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, loop.weight_decay), lr=loop.lr)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    best = BestEpoch(model, on_epoch)

    def on_epoch_end(epoch: int, loss: float) -> None:
        scores = predict(model, val, img_size, eval_batch_size, loop.num_workers)
        best.update(epoch, accuracy(scores, val["y"]), loss)

    fit(prepared, loader, optimizer, accelerator, loop, checkpoint_dir=None, on_epoch_end=on_epoch_end)
    return best.restore(), best
