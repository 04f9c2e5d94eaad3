"""DINO (Caron et al. 2021), as Stegmueller et al. applied it to Pap smears: a student matches an EMA teacher.

Global crops only: cytology tiles are not object-centric, so DINO's small local crops mostly show background
or a fragment of one cell. The exported backbone is the teacher's, which DINO evaluates because it is the better
of the two throughout training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cyto_ssrl.methods.base import SSLMethod, all_reduce_mean, create_backbone, ema_update, frozen_copy
from cyto_ssrl.methods.config import PretrainConfig
from cyto_ssrl.methods.losses import dino_loss


class NormedLinear(nn.Module):
    """A bias-free linear layer with unit-norm weight rows: weight normalisation with the gain frozen at 1.

    DINO freezes that gain (norm_last_layer=True) because a free gain lets the output scale, and with it the
    loss, drift; written out directly it also pickles, which torch's weight_norm parametrisation does not.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """3-layer MLP to a bottleneck, L2 normalisation, then the weight-normalised prototype layer."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last_layer = NormedLinear(bottleneck_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """DINO's teacher momentum: `base` at step 0 rising along a half cosine to 1.0 at `total_steps`."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class DINO(SSLMethod):
    view_kinds = ("global", "global")

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.student = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
        self.student_head = DINOHead(self.student.num_features, cfg.proj_hidden_dim, cfg.proj_dim, cfg.dino_out_dim)
        self.teacher = frozen_copy(self.student)
        self.teacher_head = frozen_copy(self.student_head)
        self.register_buffer("center", torch.zeros(cfg.dino_out_dim))

    @property
    def backbone(self) -> nn.Module:
        return self.teacher

    def forward(self, views: list[Tensor]) -> Tensor:
        n_views, batch = len(views), views[0].shape[0]
        images = torch.cat(views)
        student_out = self.student_head(self.student(images)).reshape(n_views, batch, -1)
        with torch.no_grad():
            teacher_out = self.teacher_head(self.teacher(images)).reshape(n_views, batch, -1)
        loss = dino_loss(student_out, teacher_out, self.center, self.cfg.student_temp, self.cfg.teacher_temp)
        if self.training:
            self._update_center(teacher_out)
        return loss

    @torch.no_grad()
    def _update_center(self, teacher_out: Tensor) -> None:
        # Averaged over all processes so every process centres by the same vector, as one big batch would.
        batch_center = all_reduce_mean(teacher_out.mean(dim=(0, 1)))
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1.0 - self.cfg.center_momentum)

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(self.cfg.momentum, step, total_steps)
        ema_update(self.teacher, self.student, momentum)
        ema_update(self.teacher_head, self.student_head, momentum)
