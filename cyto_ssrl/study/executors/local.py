"""The default executor: each cell runs in the driver's own process, one after another, as it is submitted."""

from __future__ import annotations

from cyto_ssrl.study.cells import STAGES
from cyto_ssrl.study.executors.base import OVER, CellJob, Resources
from cyto_ssrl.study.job import run_cell


class LocalExecutor:
    name = "local"
    jobs_outlive_driver = False

    def __init__(self, stages=STAGES):
        self.stages = stages  # stage -> the function that runs its cells (cells.STAGES; tests pass their own)
        self.errors: dict[str, str] = {}
        self._count = 0

    def check(self, needs: list[Resources]) -> None:
        """Nothing to ask: a cell that wants a GPU this machine lacks trains on its CPU."""

    def has_gpus(self) -> bool:
        return False  # resources are not asked of anyone: a stage takes the GPU it finds

    def submit(self, jobs: list[CellJob]) -> list[str]:
        ids = []
        for job in jobs:
            self._count += 1
            job_id = str(self._count)
            try:
                run_cell(job, stages=self.stages)
            except Exception as exc:  # its run is FAILED; the cells that do not need it go on
                self.errors[job_id] = " ".join(str(exc).split())
            ids.append(job_id)
        return ids

    def states(self, job_ids: list[str]) -> dict[str, str]:
        return dict.fromkeys(job_ids, OVER)

    def slots(self, running: int) -> int:
        return 1  # one at a time

    def reason(self, job_id: str) -> str:
        return self.errors.get(job_id, "")
