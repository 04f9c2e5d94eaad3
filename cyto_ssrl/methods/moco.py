"""MoCo v2 (Chen et al. 2020) as CCRL uses it (Nakhli et al. 2023): a local crop queries its image's global view.

The query side is encoder -> projector -> predictor; the key side is an EMA of encoder -> projector, so the
predictor is what lets a local crop's embedding reach its global view's. Negatives are past keys in a queue.
The loss is not symmetrised: the swapped pair would ask a global view to predict one of its local crops, which is
not the local-to-global task, and it would double the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cyto_ssrl.methods.base import MLP, SSLMethod, create_backbone, ema_update, frozen_copy, gather
from cyto_ssrl.methods.config import PretrainConfig
from cyto_ssrl.methods.losses import info_nce_queue


class MoCo(SSLMethod):
    view_kinds = ("local", "global")

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
        self.projector = MLP(self.backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = MLP(cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[Tensor]) -> Tensor:
        local, global_ = views
        q = self.predictor(self.projector(self.backbone(local)))
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_backbone(global_)), dim=1)
        # A copy: the enqueue below writes the queue in place, and backward still needs the negatives.
        loss = info_nce_queue(q, k, self.queue.clone(), self.cfg.moco_temperature)
        if self.training:
            self._enqueue(gather(k))
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest entries with `keys` (all processes' keys, so every process keeps the same queue)."""
        keys = keys[-len(self.queue) :].to(self.queue.dtype)  # keys are half precision under autocast
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[slots] = keys
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % len(self.queue))

    def on_step_end(self, step: int, total_steps: int) -> None:
        # MoCo keeps the key encoder's momentum constant (no schedule).
        ema_update(self.key_backbone, self.backbone, self.cfg.momentum)
        ema_update(self.key_projector, self.projector, self.cfg.momentum)
