"""Each cell a Ray task with the CPUs and GPUs its stage needs, on the Ray cluster at `ray_address` (a Ray instance
of this machine's cores and GPUs when none is given): several GPUs of one workstation, or a cluster without SLURM.

Ray places each task on a node with room for it and runs it again when its node is lost (`max_retries`); the task
finds its MLflow run as the lost attempt left it. A task belongs to the driver that submitted it: when the driver
dies its tasks end too, and a new driver runs their cells again.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.executors.base import OVER, RUNNING, CellJob, Resources
from cyto_ssrl.study.job import run_cell
from cyto_ssrl.study.presets import StudyConfig

NODE_RETRIES = 3  # how often a task lost with its node (or its worker process) is started again


def ray_cell(job: CellJob) -> str:
    """What a Ray task runs: one cell, its run tagged with the node it ran on."""
    import ray

    return run_cell(job, node=f"ray:{ray.get_runtime_context().get_node_id()[:12]}")


class RayExecutor:
    name = "ray"
    jobs_outlive_driver = False

    def __init__(self, cfg: StudyConfig, max_running: int | None):
        self.address = cfg.ray_address
        self.max_running = max_running
        self.tasks: dict[str, object] = {}  # job id -> the task's ObjectRef
        self.errors: dict[str, str] = {}
        self.nodes: list[tuple[float, float]] = []

    def check(self, needs: list[Resources]) -> None:
        import ray

        if not ray.is_initialized():
            if self.address not in ("", "auto"):
                answer(self.address)
            # A new local instance when no address is given; log_to_driver: cells' output stays in Ray's logs
            ray.init(address=self.address or None, log_to_driver=False, include_dashboard=False)
        self.nodes = [
            (node["Resources"].get("CPU", 0), node["Resources"].get("GPU", 0)) for node in ray.nodes() if node["Alive"]
        ]
        for need in set(needs):
            if need.nodes > 1:
                raise CytoError("a pre-training over several nodes runs on SLURM (executor=slurm); Ray gives one node")
            if not any(cpus >= need.cpus and gpus >= need.gpus for cpus, gpus in self.nodes):
                most = max(self.nodes, key=lambda node: (node[1], node[0]))
                raise CytoError(
                    f"no cell of this study can ever start: one asks for {need.gpus} GPU(s) and {need.cpus} CPU(s) on "
                    f"one node, and the Ray cluster's largest node has {most[1]:g} GPU(s) and {most[0]:g} CPU(s); "
                    "lower num_processes, or set gpus=false"
                )

    def has_gpus(self) -> bool:
        return any(gpus for _, gpus in self.nodes)

    def submit(self, jobs: list[CellJob]) -> list[str]:
        import ray

        task = ray.remote(ray_cell)
        ids = []
        for job in jobs:
            ref = task.options(
                num_cpus=job.resources.cpus,
                num_gpus=job.resources.gpus,
                max_retries=NODE_RETRIES,
                retry_exceptions=False,  # a cell that raises has failed; only lost nodes and workers are retried
                name=job.cell_key,
            ).remote(job)
            job_id = ref.task_id().hex()
            self.tasks[job_id] = ref
            ids.append(job_id)
        return ids

    def states(self, job_ids: list[str]) -> dict[str, str]:
        import ray

        refs = [self.tasks[job_id] for job_id in job_ids if job_id in self.tasks]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        over = {ref.task_id().hex() for ref in ready}
        return {job_id: OVER if job_id in over or job_id not in self.tasks else RUNNING for job_id in job_ids}

    def slots(self, running: int) -> int:
        return max(0, self.max_running - running) if self.max_running else 1_000_000

    def reason(self, job_id: str) -> str:
        import ray

        ref = self.tasks.pop(job_id, None)
        if ref is None:
            return ""
        try:
            ray.get(ref)
        except Exception as exc:  # the task's own error, or Ray's when it gave up on a lost node
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return f"Ray task {job_id[:12]}: {lines[-1] if lines else type(exc).__name__}"
        return ""


def answer(address: str) -> None:
    """A one-line error when nothing answers at the Ray address (ray.init would wait a long time for it)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    port = parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=5).close()
    except OSError as exc:
        why = exc.strerror or exc
        raise CytoError(f"the Ray cluster at {address} does not answer ({why}); is `ray start` up?") from None
