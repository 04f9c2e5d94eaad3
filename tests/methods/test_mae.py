"""MAE: masking, impossible mask ratios, and the plain ViT it exports."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods import build_method, create_backbone
from cyto_ssrl.methods.mae import MAE, random_masking, sincos_pos_embed

from .helpers import IMG, make_views, tiny_cfg, train


def test_mae_mask_ratio_half_keeps_exactly_half_the_patches():
    tokens = torch.randn(3, 16, 5)
    kept, mask, ids_restore = random_masking(tokens, 0.5)
    assert kept.shape == (3, 8, 5)
    assert mask.sum(dim=1).tolist() == [8, 8, 8]
    for sample in range(3):  # the kept tokens are exactly the unmasked ones
        visible = tokens[sample][mask[sample] == 0]
        assert torch.equal(torch.sort(visible, dim=0).values, torch.sort(kept[sample], dim=0).values)
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(16).expand(3, -1))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.25, 1.5, 0.99])
def test_mae_rejects_impossible_mask_ratio(ratio):
    # 0.99 of 16 patches would leave none visible.
    with pytest.raises(CytoError, match="mask_ratio"):
        MAE(tiny_cfg("mae", mask_ratio=ratio))


def test_mae_exports_a_plain_vit_with_fixed_position_embedding(cells):
    method = build_method(tiny_cfg("mae"))
    views = make_views(method.view_kinds, cells)
    train(method, views, steps=1)
    backbone = method.backbone
    assert isinstance(backbone, VisionTransformer)
    assert "pos_embed" not in dict(backbone.named_parameters())
    assert torch.equal(backbone.pos_embed, sincos_pos_embed(backbone.embed_dim, (IMG // 8, IMG // 8)))
    backbone.eval()
    with torch.no_grad():
        features = backbone(views[0])
    assert features.shape == (len(cells), backbone.num_features)
    # The state dict loads into a fresh timm model, so downstream needs no MAE code.
    fresh = create_backbone("vit_tiny", IMG, 8)
    fresh.load_state_dict(backbone.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(views[0]), features, atol=1e-5)
