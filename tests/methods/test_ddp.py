"""Two processes (DistributedDataParallel on gloo) train like one process on the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from cyto_ssrl.methods import METHODS, build_method

from .helpers import IMG, tiny_cfg

DDP_METHODS = ("simclr", "moco", "dino")


def _ddp_model(name: str):
    """The method on a BatchNorm-free network, so that half batches per process match one whole batch exactly."""
    torch.manual_seed(0)
    method = build_method(tiny_cfg(name, backbone="vit_tiny"))
    for module in list(method.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm1d):
                setattr(module, child_name, torch.nn.Identity())
    return method


def _ddp_views(name: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, IMG, IMG, generator=generator) for _ in METHODS[name].view_kinds]


def _ddp_result(method, loss: torch.Tensor) -> dict[str, np.ndarray]:
    grads = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
    result = {"loss": loss.detach().numpy(), "grads": grads.numpy()}
    state = {"moco": "queue", "dino": "center"}.get(method.cfg.method)
    if state is not None:
        result["state"] = getattr(method, state).numpy()
    return result


def _ddp_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for name in DDP_METHODS:
            method = _ddp_model(name)
            views = [v.chunk(world)[rank] for v in _ddp_views(name)]
            ddp = DistributedDataParallel(method)  # kept alive: its reducer averages gradients during backward
            loss = ddp(views)
            loss.backward()
            if rank == 0:  # a file, not a pipe: megabytes of gradients would fill a pipe nobody reads until join
                np.savez(out_dir / f"{name}.npz", **_ddp_result(method, loss))
    finally:
        dist.destroy_process_group()


def test_two_processes_train_like_one_process_on_the_whole_batch(tmp_path):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, tmp_path), nprocs=2)
    for name in DDP_METHODS:
        got = np.load(tmp_path / f"{name}.npz")
        method = _ddp_model(name)
        loss = method(_ddp_views(name))
        loss.backward()
        want = _ddp_result(method, loss)
        # Gathered negatives make SimCLR's loss the global one; the others average per-process losses.
        if name == "simclr":
            assert np.allclose(got["loss"], want["loss"], rtol=1e-5)
        assert np.linalg.norm(got["grads"] - want["grads"]) <= 1e-5 * np.linalg.norm(want["grads"]), name
        if "state" in want:  # MoCo's queue holds both processes' keys; DINO's centre is their mean
            assert np.allclose(got["state"], want["state"], atol=1e-6), name
