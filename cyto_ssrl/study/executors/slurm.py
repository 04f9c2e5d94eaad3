"""Each cell a SLURM job, submitted through submitit.

Resources follow the cell's stage (executors.base.resources); partition, account, QOS, time limit and memory come
from the `slurm` block of the study's settings (SlurmSettings). The downstream cells of one model x mode x budget go
as one job array. A job SLURM preempts, times out or requeues starts again in the same MLflow run: a pre-training
goes on from its last epoch checkpoint (job.run_cell), and submitit's checkpointing hook (CellTask.checkpoint)
requeues a job that reaches its time limit.

The engine's view comes from `squeue` (a job it no longer lists is over), the reason a job failed from `sacct` where
the cluster keeps accounting, and from the job's log.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.executors.base import OVER, QUEUED, RUNNING, CellJob, Resources
from cyto_ssrl.study.job import run_cell
from cyto_ssrl.study.presets import StudyConfig

ACTIVE = {"PENDING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED, "REQUEUE_FED": QUEUED, "SUSPENDED": QUEUED}


@dataclass(frozen=True)
class SlurmSettings:
    """The study's `slurm` block; every field may be left out."""

    partition: str = ""  # "" is the cluster's default partition
    account: str = ""
    qos: str = ""
    time_min: int = 24 * 60  # each job's time limit; a pre-training that reaches it is requeued and goes on
    mem_gb: float = 0  # per node; 0 leaves SLURM's default
    nodes: int = 1  # nodes of one pre-training job (num_processes are spread over them)
    cpus_per_process: int = 1  # CPUs per training process or cell (data-loader workers share them)
    array_parallelism: int = 64  # at most this many tasks of one job array at once
    setup: tuple[str, ...] = ()  # shell lines run before each job, e.g. "module load cuda/12.4"
    constraint: str = ""  # a node feature every job asks for, e.g. "a100"


def slurm_settings(block: dict) -> SlurmSettings:
    known = {f.name for f in dataclasses.fields(SlurmSettings)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise CytoError(f"unknown field(s) {unknown} in the study's slurm block; known: {sorted(known)}")
    return SlurmSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})


class CellTask:
    """What a SLURM job runs: one cell. Checkpointable in submitit's sense: at its time limit the job requeues itself
    and the cell goes on from the checkpoint its run left (only pre-training has one; other cells start over)."""

    def __call__(self, job: CellJob) -> str:
        return run_cell(job, node=os.environ.get("SLURMD_NODENAME", ""))

    def checkpoint(self, job: CellJob):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


class SlurmExecutor:
    name = "slurm"
    jobs_outlive_driver = True  # jobs run on when the driver dies; a new driver re-attaches to them

    def __init__(self, cfg: StudyConfig, folder: Path, max_running: int | None):
        self.settings = slurm_settings(cfg.slurm)
        self.folder = Path(folder)
        self.max_running = max_running
        self.nodes: list[tuple[int, int]] = []  # (CPUs, GPUs) of each node of the partition

    def check(self, needs: list[Resources]) -> None:
        if shutil.which("sbatch") is None:
            raise CytoError("executor=slurm needs SLURM's sbatch on PATH, and there is none on this machine")
        self.nodes = partition_nodes(self.settings.partition)
        where = f"partition {self.settings.partition!r}" if self.settings.partition else "the default partition"
        if not self.nodes:
            raise CytoError(f"SLURM lists no node in {where}")
        for need in set(needs):
            cpus = need.cpus * self.settings.cpus_per_process
            fitting = [node for node in self.nodes if node[0] >= cpus and node[1] >= need.gpus]
            if len(fitting) < need.nodes:
                most = max(self.nodes, key=lambda node: (node[1], node[0]))
                raise CytoError(
                    f"no job of this study can ever start: one asks for {need.nodes} node(s) with {need.gpus} GPU(s) "
                    f"and {cpus} CPU(s) each, and {where} has {len(fitting)} such node(s) (its largest: {most[1]} "
                    f"GPU(s), {most[0]} CPU(s)); lower num_processes or cpus_per_process, or choose another partition"
                )

    def has_gpus(self) -> bool:
        return any(gpus for _, gpus in self.nodes)

    def submit(self, jobs: list[CellJob]) -> list[str]:
        """One sbatch per group of jobs with the same resources and array (model x mode x budget), in order."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[(job.resources, array_of(job.cell_key))].append(i)
        ids = [""] * len(jobs)
        for (resources, _), members in groups.items():
            executor = self._executor(resources)
            task = CellTask()
            if len(members) == 1:
                ids[members[0]] = executor.submit(task, jobs[members[0]]).job_id
                continue
            with executor.batch():
                submitted = [executor.submit(task, jobs[i]) for i in members]
            for i, job in zip(members, submitted):
                ids[i] = job.job_id
        return ids

    def _executor(self, need: Resources):
        import submitit

        s = self.settings
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        optional = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos}
        if s.constraint:
            optional["slurm_constraint"] = s.constraint
        executor.update_parameters(
            name="cyto-cell",
            nodes=need.nodes,
            tasks_per_node=1,  # one launcher per node; `accelerate launch` starts the training processes
            cpus_per_task=need.cpus * s.cpus_per_process,
            gpus_per_node=need.gpus,
            timeout_min=s.time_min,
            slurm_array_parallelism=s.array_parallelism,
            slurm_additional_parameters={"requeue": True},
            slurm_setup=list(s.setup),
            **({"mem_gb": s.mem_gb} if s.mem_gb else {}),
            **{k: v for k, v in optional.items() if v},
        )
        return executor

    def states(self, job_ids: list[str]) -> dict[str, str]:
        listed = squeue_states()
        return {job_id: _state(listed.get(job_id)) for job_id in job_ids}

    def slots(self, running: int) -> int:
        return max(0, self.max_running - running) if self.max_running else 1_000_000

    def reason(self, job_id: str) -> str:
        """SLURM's final state (with accounting) and the end of the job's error log."""
        state = sacct_state(job_id)
        log = next(iter(self.folder.glob(f"{job_id}/*_log.err")), None)
        last = ""
        if log is not None:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            last = f"; its log {log} ends: {lines[-1][:300]}" if lines else f"; log {log}"
        return f"SLURM job {job_id} ended {state or 'without finishing its run'}{last}"


def array_of(cell_key: str) -> str:
    """The job array a cell goes in: the downstream resamplings of one model x mode x budget share one."""
    return re.sub(r"/r\d+$", "", cell_key) if cell_key.startswith("downstream/") else cell_key


def _state(slurm_state: str | None) -> str:
    if slurm_state is None:
        return OVER  # squeue no longer lists it
    return ACTIVE.get(slurm_state, RUNNING if slurm_state in ("RUNNING", "CONFIGURING", "COMPLETING") else OVER)


def squeue_states() -> dict[str, str]:
    """Job id (array tasks as ARRAY_TASK) -> state, for every job of this user SLURM still lists."""
    done = subprocess.run(
        ["squeue", "--me", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise CytoError(f"squeue failed: {done.stderr.strip() or done.returncode}")
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if line.strip())


def sacct_state(job_id: str) -> str:
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State,ExitCode", "-j", job_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.strip().splitlines() if done.returncode == 0 else []
    return lines[-1].replace("|", " exit ") if lines else ""


def partition_nodes(partition: str) -> list[tuple[int, int]]:
    """(CPUs, GPUs) of each node of `partition` ('' the default one), from sinfo."""
    command = ["sinfo", "-h", "-N", "-o", "%N|%c|%G|%P"] + (["-p", partition] if partition else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise CytoError(f"SLURM does not answer (sinfo: {done.stderr.strip() or done.returncode})")
    nodes = {}
    for line in done.stdout.splitlines():
        name, cpus, gres, part = line.split("|")
        if partition or part.endswith("*"):  # without a partition, the default one (sinfo marks it with *)
            nodes[name] = (int(cpus), gres_gpus(gres))
    return list(nodes.values())


def gres_gpus(gres: str) -> int:
    """GPUs in a node's generic resources: 'gpu:4', 'gpu:a100:8(S:0-1)', '(null)'."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", gres))
