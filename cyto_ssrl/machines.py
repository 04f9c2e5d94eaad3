"""The machines one training spreads over: this one, or every node of a SLURM allocation.

A pre-training job that SLURM gives several nodes runs one launcher per node (the study's slurm executor asks for one
task per node); each runs `accelerate launch` with the same main address and port and its own machine rank, all
read from SLURM's environment. Node 0 holds the MLflow run; the others only train (stages.pretrain.follow_pretrain).
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Machines:
    count: int = 1
    rank: int = 0
    main_address: str = "127.0.0.1"
    port: int = 0  # 0: a free port of this machine

    @property
    def follower(self) -> bool:
        return self.rank > 0


def from_environment(env=os.environ) -> Machines:
    """This process's place in a multi-node SLURM job (SLURM_JOB_NUM_NODES > 1), else this machine alone."""
    count = int(env.get("SLURM_JOB_NUM_NODES", "1") or 1)
    if count <= 1:
        return Machines()
    # Every node computes the same port from the job id, so nothing has to be passed between them.
    port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
    return Machines(count, int(env["SLURM_NODEID"]), first_host(env["SLURM_JOB_NODELIST"]), port)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as 'gpu[03-04,07]'."""
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    return hosts[0]


def free_port() -> int:
    """A port for the processes' rendezvous: trainings may start side by side on one machine, so 29500 would clash."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
