"""The methods' losses as pure functions of tensors (no state, no communication between processes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020): z1[i] and z2[i] (N, D) are two views of image i.

    Each of the 2N embeddings must pick its partner out of the other 2N - 1 by cosine similarity / temperature;
    the loss is the mean cross-entropy over all 2N anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE (He et al. 2020): query q[i] (N, D) against its key k[i] (N, D) and K negatives (K, D).

    q and k are L2-normalised here; the queue holds normalised keys already. Gradients flow into whatever of q, k
    and queue carries them: MoCo passes keys and queue without.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def dino_loss(
    student_out: Tensor, teacher_out: Tensor, center: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """DINO's self-distillation loss (Caron et al. 2021) over views: outputs are (V, B, K) head logits.

    Teacher logits are centred (against collapse to one dimension) and sharpened (against collapse to uniform);
    each student view is trained to match every *other* teacher view, averaged over those pairs and the batch.
    """
    teacher_p = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach()
    student_logp = F.log_softmax(student_out / student_temp, dim=-1)
    # ce[t, s] = mean over the batch of the cross-entropy of student view s against teacher view t. Elementwise
    # ops, not a matmul, so autocast leaves the float32 softmax outputs in float32.
    ce = -(teacher_p[:, None] * student_logp[None]).sum(dim=-1).mean(dim=-1)
    other_view = ~torch.eye(ce.shape[0], ce.shape[1], dtype=torch.bool, device=ce.device)
    return ce[other_view].mean()
