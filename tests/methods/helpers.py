"""Tiny method settings, views of real cells as the data loader stacks them, and a few training steps."""

from __future__ import annotations

import torch
from PIL import Image

from cyto_ssrl.data.transforms import MultiView, normalize_images
from cyto_ssrl.methods.config import PretrainConfig

IMG = 32


def tiny_cfg(method: str, **overrides) -> PretrainConfig:
    settings = dict(
        method=method,
        backbone="vit_tiny" if method == "mae" else "resnet18",
        img_size=IMG,
        patch_size=8,
        queue_size=64,
        dino_out_dim=256,
        proj_hidden_dim=128,
        proj_dim=64,
        decoder_dim=64,
        decoder_depth=1,
    )
    return PretrainConfig(**(settings | overrides))


def make_views(kinds: tuple[str, ...], images: list[Image.Image]) -> list[torch.Tensor]:
    """One (B, 3, IMG, IMG) batch per view kind, as the data loader's collate would stack them."""
    per_image = [MultiView(kinds, IMG)(image) for image in images]
    return [normalize_images(torch.stack(views)) for views in zip(*per_image)]


def train(method, views: list[torch.Tensor], steps: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(1, steps + 1):
        loss = method(views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_step_end(step, steps)
        losses.append(loss.item())
    return losses
