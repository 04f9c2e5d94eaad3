"""DINO and MoCo: momentum targets, DINO's teacher and centre, MoCo's queue."""

from __future__ import annotations

import pytest
import torch

from cyto_ssrl.methods import build_method

from .helpers import make_views, tiny_cfg


@pytest.mark.parametrize(
    ("name", "online", "target"),
    [
        ("dino", "student", "teacher"),
        ("dino", "student_head", "teacher_head"),
        ("moco", "backbone", "key_backbone"),
        ("moco", "projector", "key_projector"),
    ],
)
def test_ema_target_moves_toward_online_network(name, online, target, cells):
    method = build_method(tiny_cfg(name, momentum=0.99))
    views = make_views(method.view_kinds, cells)
    online_net, target_net = getattr(method, online), getattr(method, target)
    assert not any(p.requires_grad for p in target_net.parameters())

    def distance() -> float:
        return sum((o - t).norm() ** 2 for o, t in zip(online_net.parameters(), target_net.parameters())).item()

    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    method(views).backward()
    optimizer.step()
    assert all(p.grad is None for p in target_net.parameters())
    before = distance()
    method.on_step_end(1, 10)
    assert 0 < distance() < before


def test_dino_exports_the_teacher():
    method = build_method(tiny_cfg("dino"))
    assert method.backbone is method.teacher


def test_dino_centre_tracks_teacher_output_in_training_only(cells):
    method = build_method(tiny_cfg("dino"))
    views = make_views(method.view_kinds, cells)
    method.eval()
    with torch.no_grad():
        method(views)
    assert torch.count_nonzero(method.center) == 0
    method.train()
    with torch.no_grad():
        method(views)
        teacher_mean = method.teacher_head(method.teacher(torch.cat(views))).mean(dim=0)
    expected = (1 - method.cfg.center_momentum) * teacher_mean
    assert torch.allclose(method.center, expected, atol=1e-6)


def test_moco_queue_is_a_ring_of_normalised_keys(cells):
    method = build_method(tiny_cfg("moco", queue_size=24))
    views = make_views(method.view_kinds, cells)
    with torch.no_grad():
        method(views)
        assert method.queue_ptr.item() == 16
        method(views)
    assert method.queue_ptr.item() == 8  # 32 keys written into 24 slots wrap around
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(24), atol=1e-5)
