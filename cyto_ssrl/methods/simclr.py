"""SimCLR (Chen et al. 2020): two global views of each image attract, every other image in the batch repels."""

from __future__ import annotations

import torch
from torch import Tensor

from cyto_ssrl.methods.base import MLP, SSLMethod, create_backbone, gather
from cyto_ssrl.methods.config import PretrainConfig
from cyto_ssrl.methods.losses import nt_xent


class SimCLR(SSLMethod):
    view_kinds = ("global", "global")

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
        self.projector = MLP(self.backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)

    def forward(self, views: list[Tensor]) -> Tensor:
        view1, view2 = views
        # One pass over both views: half the kernel launches, and BatchNorm sees the same statistics for both.
        z1, z2 = self.projector(self.backbone(torch.cat([view1, view2]))).chunk(2)
        # Negatives come from the global batch. Every process computes the same global loss; the gathered
        # gradients reach each process's own embeddings, and DDP's averaging recovers the true gradient.
        return nt_xent(gather(z1), gather(z2), self.cfg.temperature)
