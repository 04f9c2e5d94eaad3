"""Cytology augmentations (torchvision.transforms.v2): images in, tensors out, no labels.

Every view keeps the cell's appearance plausible: flips and 90-degree turns are free (a smear has no up), colour
jitter keeps hue changes small because stain colour carries diagnostic information, and grey-scale and blur make
features robust to scanner and focus differences.

Pre-training views leave the loader's workers as uint8 tensors and the training loop normalises whole batches on
the device (`normalize_images`): a quarter of the bytes pass through shared memory (and to a GPU), and one batched
op replaces two per view in the workers, which on a CPU share the cores with the model.
"""

from __future__ import annotations

import torch
from PIL.Image import Image
from torch import Tensor
from torchvision.transforms import v2

from cyto_ssrl.errors import CytoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# RandomResizedCrop area ranges. MAE's (0.2, 1) is its paper's; local crops see a cell or part of one.
CROP_SCALES = {"mae": (0.2, 1.0), "global": (0.4, 1.0), "local": (0.05, 0.4)}
VIEW_KINDS = tuple(CROP_SCALES)


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def normalize_images(images: Tensor) -> Tensor:
    """uint8 images (..., 3, H, W), as the pre-training views come, to ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1) * 255
    return (images.float() - mean) / std


def _geometry(img_size: int, scale: tuple[float, float]) -> list[v2.Transform]:
    return [
        v2.RGB(),
        v2.RandomResizedCrop(img_size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        # Exact quarter turns: the crop is square, so these rotate without interpolation or clipped corners.
        v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
    ]


def _photometric(img_size: int) -> list[v2.Transform]:
    blur_kernel = max(3, img_size // 10 | 1)  # about a tenth of the view, odd (SimCLR: 23 px at 224)
    return [
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.05)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        # torchvision blurs a PIL image as a uint8 tensor and converts it back; converting first gives the same
        # pixels without the round trip (about a tenth of a view's augmentation time on a CPU).
        v2.ToImage(),
        v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=0.5),
    ]


def view_transform(kind: str, img_size: int) -> v2.Compose:
    """The random augmentation for one view kind: "mae" (geometry only), "global" or "local" (geometry + colour).

    Returns a uint8 (3, H, W) tensor; `normalize_images` makes the model's input of a batch of them.
    """
    if kind not in CROP_SCALES:
        raise CytoError(f"unknown view kind {kind!r}; choose one of {'|'.join(VIEW_KINDS)}")
    steps = _geometry(img_size, CROP_SCALES[kind])
    # MAE reconstructs pixels; colour noise would only make the targets noisier. _photometric ends on a tensor.
    steps += [v2.ToImage()] if kind == "mae" else _photometric(img_size)
    return v2.Compose(steps)


def eval_transform(img_size: int) -> v2.Compose:
    """Deterministic: the whole image resized to img_size x img_size (no crop can cut off the cell), normalised."""
    return v2.Compose([v2.RGB(), v2.Resize((img_size, img_size), antialias=True), *_to_normalised_tensor()])


class MultiView:
    """Makes one augmented view per kind of an image: `MultiView(method.view_kinds, img_size)(image)`."""

    def __init__(self, kinds: tuple[str, ...] | list[str], img_size: int):
        self.transforms = [view_transform(kind, img_size) for kind in kinds]

    def __call__(self, image: Image | Tensor) -> list[Tensor]:
        return [transform(image) for transform in self.transforms]
