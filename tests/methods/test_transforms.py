"""View transforms: one uint8 view per kind, normalised as eval normalises, from an image and nothing else."""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image

from cyto_ssrl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiView,
    eval_transform,
    normalize_images,
    view_transform,
)
from cyto_ssrl.errors import CytoError

from .helpers import IMG


def test_multiview_makes_one_uint8_view_per_kind_that_normalises_like_eval(cells):
    views = MultiView(("local", "global", "mae"), IMG)(cells[0])
    assert len(views) == 3
    assert all(v.shape == (3, IMG, IMG) and v.dtype == torch.uint8 for v in views)
    # A flat grey image through the colour-free MAE view: exactly ImageNet-normalised grey, as eval makes it.
    grey = Image.new("RGB", (50, 70), (128, 128, 128))
    expected = ((128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))[:, None, None]
    for view in (normalize_images(view_transform("mae", IMG)(grey)[None])[0], eval_transform(IMG)(grey)):
        assert torch.allclose(view, expected.expand(3, IMG, IMG), atol=1e-5)


def test_transforms_take_an_image_and_nothing_else(cells):
    assert list(inspect.signature(MultiView.__call__).parameters) == ["self", "image"]
    assert list(inspect.signature(view_transform).parameters) == ["kind", "img_size"]
    assert list(inspect.signature(eval_transform).parameters) == ["img_size"]
    first, second = eval_transform(IMG)(cells[0]), eval_transform(IMG)(cells[0])
    assert torch.equal(first, second)


def test_unknown_view_kind_is_a_user_error():
    with pytest.raises(CytoError, match="view kind"):
        view_transform("tiny", IMG)
