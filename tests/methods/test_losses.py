"""The contrastive and distillation losses against direct computations."""

from __future__ import annotations

import math

import torch

from cyto_ssrl.methods.losses import dino_loss, info_nce_queue, nt_xent


def test_nt_xent_matches_a_direct_computation():
    z1, z2, temperature = torch.randn(6, 5), torch.randn(6, 5), 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    terms = []
    for anchor in range(2 * n):
        partner = (anchor + n) % (2 * n)
        similarities = {j: torch.dot(z[anchor], z[j]) / temperature for j in range(2 * n) if j != anchor}
        denominator = sum(torch.exp(s) for s in similarities.values())
        terms.append(-torch.log(torch.exp(similarities[partner]) / denominator))
    assert torch.allclose(nt_xent(z1, z2, temperature), torch.stack(terms).mean(), atol=1e-5)


def test_info_nce_queue_rewards_aligned_positives():
    q = torch.randn(8, 16)
    queue = torch.nn.functional.normalize(torch.randn(32, 16), dim=1)
    aligned = info_nce_queue(q, q + 0.01 * torch.randn(8, 16), queue, 0.07)
    unrelated = info_nce_queue(q, torch.randn(8, 16), queue, 0.07)
    assert aligned.ndim == 0 and math.isfinite(aligned.item())
    assert aligned < unrelated
    # Positive and every negative equally similar: cross-entropy over K + 1 equal logits.
    orthogonal = info_nce_queue(torch.eye(4)[:1], torch.eye(4)[1:2], torch.eye(4)[2:], 0.07)
    assert torch.isclose(orthogonal, torch.tensor(math.log(3)))


def test_dino_loss_pairs_each_student_view_with_the_other_teacher_view():
    student, teacher, center = torch.randn(2, 4, 10), torch.randn(2, 4, 10), torch.randn(10)
    p_teacher = torch.softmax((teacher - center) / 0.04, dim=-1)
    logp_student = torch.log_softmax(student / 0.1, dim=-1)
    cross = [-(p_teacher[t] * logp_student[s]).sum(-1).mean() for t, s in [(0, 1), (1, 0)]]
    assert torch.allclose(dino_loss(student, teacher, center, 0.1, 0.04), torch.stack(cross).mean(), atol=1e-5)
