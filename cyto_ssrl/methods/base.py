"""The interface every SSL method implements, the backbone factory, and the few helpers the methods share.

A method is an `nn.Module` whose `forward(views)` returns the loss, so the whole training step is what DDP (or
Accelerate) wraps. The trainer asks `view_kinds` which augmented views to make, calls `on_step_end` after each
optimizer step (EMA targets move there), and exports `backbone`: a plain timm model, `backbone(images) -> features`.
"""

from __future__ import annotations

import copy

import timm
import timm.models
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn

from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods.config import PretrainConfig

VIT_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


def create_backbone(name: str, img_size: int, patch_size: int) -> nn.Module:
    """A randomly initialised timm model that maps (B, 3, H, W) images to pooled (B, model.num_features) features."""
    if name in VIT_NAMES:
        if img_size % patch_size:
            raise CytoError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        # Average-pooled patch tokens, not the cls token: MAE puts no loss on the cls token, MAE fine-tunes on the
        # pooled tokens, and every method then exports the same kind of feature. fc_norm=False keeps timm's final
        # LayerNorm on every token (MAE's encoder output) instead of one LayerNorm after pooling.
        return timm.create_model(
            VIT_NAMES[name],
            pretrained=False,
            num_classes=0,
            img_size=img_size,
            patch_size=patch_size,
            global_pool="avg",
            fc_norm=False,
        )
    if timm.is_model(name) and timm.models.is_model_in_modules(name, ["resnet"]):
        return timm.create_model(name, pretrained=False, num_classes=0)
    raise CytoError(f"unknown backbone {name!r}; choose vit_tiny|vit_small|vit_base or a timm resnet name")


class SSLMethod(nn.Module):
    """One self-supervised method: views in, scalar loss out."""

    # The augmented views the data loader makes of each image, in the order forward receives them
    # (kinds of cyto_ssrl.data.transforms.view_transform).
    view_kinds: tuple[str, ...] = ()
    backbone: nn.Module

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, views: list[Tensor]) -> Tensor:
        """`views[i]` is a (B, 3, H, W) batch of view kind `view_kinds[i]`; returns the scalar training loss."""
        raise NotImplementedError

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (global, counting from 1) of `total_steps`."""


class MLP(nn.Sequential):
    """Linear-BN-ReLU-Linear: SimCLR's projection head, also MoCo's projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that only an EMA moves (teacher, key encoder)."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, parameter by parameter."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, 1.0 - momentum)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: Tensor) -> Tensor:
    """`x` from every process concatenated along dim 0 (rank order); `x` itself in a single process.

    Differentiable: each process's slice receives the gradient summed over all processes' losses, which DDP's
    gradient averaging turns back into the gradient of the mean loss. (torch 2.15 deprecates
    torch.distributed.nn.functional.all_gather in favour of this functional collective; both work on gloo.)
    """
    if not is_distributed():
        return x
    return funcol.all_gather_single(x, 0, dist.group.WORLD)


def all_reduce_mean(x: Tensor) -> Tensor:
    """The mean of `x` over processes (in place); `x` itself in a single process."""
    if is_distributed():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x
