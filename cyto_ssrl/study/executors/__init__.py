"""Where a study's cells run. One small interface (base.Executor) and one module per engine:

    local.py        one after another in the driver's process (the default)
    slurm.py        each cell a SLURM job through submitit (job arrays, requeue on preemption)
    ray_cluster.py  each cell a Ray task with its own CPUs and GPUs, on a Ray cluster

A new engine is a module here with a class implementing base.Executor, named in `make_executor`.
"""

from __future__ import annotations

from cyto_ssrl.checks import one_of
from cyto_ssrl.study.executors.base import Executor
from cyto_ssrl.study.presets import EXECUTORS, StudyConfig


def make_executor(cfg: StudyConfig, folder, max_running: int | None) -> Executor:
    """The executor `cfg.executor` names, checked (engine reachable, requests satisfiable) before anything runs."""
    one_of("executor", cfg.executor, EXECUTORS)
    if cfg.executor == "slurm":
        from cyto_ssrl.study.executors.slurm import SlurmExecutor

        return SlurmExecutor(cfg, folder / "slurm", max_running)
    if cfg.executor == "ray":
        from cyto_ssrl.study.executors.ray_cluster import RayExecutor

        return RayExecutor(cfg, max_running)
    from cyto_ssrl.study.executors.local import LocalExecutor

    return LocalExecutor()
