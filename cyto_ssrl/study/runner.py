"""The loop that works through a study's grid: it takes ready cells (all they need is done) one at a time, claims
each, and runs its stage function inside the claimed run, until every cell is done or blocked by a failure.

    python -m cyto_ssrl.study.runner STUDY_DIR/study-RUN_ID.json --parent RUN_ID   # a further worker (launch starts it)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from tqdm import tqdm

from cyto_ssrl import tracking
from cyto_ssrl.study.cells import STAGES, Context
from cyto_ssrl.study.claims import STALE_S, claim, heartbeat, is_live
from cyto_ssrl.study.config import study_dir
from cyto_ssrl.study.ledger import Ledger
from cyto_ssrl.study.plan import plan
from cyto_ssrl.study.presets import StudyConfig

POLL_S = 5.0  # how often a worker with nothing to do looks for work again


class Runner:
    """One worker on the grid of study `study_id`; `stages` maps a stage to the function that runs its cells."""

    def __init__(
        self,
        study_id: str,
        cfg: StudyConfig,
        parent_run_id: str,
        experiment_id: str,
        progress: bool = False,
        stages=STAGES,
    ):
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.cells = plan(cfg)
        self.ledger = Ledger(study_id, self.cells)
        self.context = Context(study_id, cfg, study_dir(cfg, study_id), self.ledger)
        self.stages = stages
        self.bar = tqdm(total=len(self.cells), desc=f"study {study_id}", unit="cell") if progress else None
        self.failed: dict[str, str] = {}
        self._held: list[str] = []
        self._logged_done = -1

    def run(self) -> dict[str, str]:
        """Work until every cell is done or blocked by a failure; returns {cell key: error} of this worker's."""
        while True:
            done, live = self._refresh()
            todo = [c for c in self.cells if c.key not in done]
            if not todo:
                break
            ready = [c for c in todo if c.key not in self.failed and c.key not in live and set(c.needs) <= done]
            if ready:
                self._take(ready[0])
            elif any(c.key in live for c in todo):
                self._say_waiting(sorted(live))
                time.sleep(POLL_S)  # the rest waits on cells other workers are running
            else:
                break  # what is left depends on a failed cell
        if self.bar is not None:
            self.bar.close()
        return self.failed

    def unfinished(self) -> list[str]:
        done, _ = self._refresh()
        return [c.key for c in self.cells if c.key not in done]

    def _refresh(self) -> tuple[set[str], set[str]]:
        """(done cell keys, cell keys a live worker holds); logs progress to the study run when it changed."""
        done = self.ledger.refresh()
        runs = self.ledger.runs
        n_done = sum(c.key in done for c in self.cells)
        if n_done != self._logged_done:
            tracking.log_metrics(
                {"study/cells_done": n_done, "study/cells_total": len(self.cells)},
                step=n_done,
                run_id=self.parent_run_id,
            )
            self._logged_done = n_done
        if self.bar is not None:
            self.bar.update(n_done - self.bar.n)
        return done, set(runs.loc[is_live(runs), "key"]) if not runs.empty else set()

    def _say_waiting(self, held: list[str]) -> None:
        if held != self._held:
            tqdm.write(
                f"waiting for {len(held)} cell(s) other workers hold, e.g. {held[0]} (a killed worker's cells "
                f"are taken over {STALE_S:.0f} s after its last heartbeat)"
            )
            self._held = held

    def _take(self, cell) -> None:
        run_id = claim(self.ledger, cell, self.experiment_id, self.parent_run_id)
        if run_id is None:
            time.sleep(random.uniform(0.2, 2.0))  # another worker claimed it; a random pause breaks ties
            return
        try:
            with heartbeat(run_id):
                self.stages[cell.stage](self.context, cell, run_id)
        except Exception as exc:  # the cell's run is FAILED; cells that do not need it go on
            self.failed[cell.key] = str(exc)
            tqdm.write(f"cell {cell.key} failed: {exc}", file=sys.stderr)
        finally:
            tracking.fail_if_running(run_id)  # a stage that failed before it opened the run leaves none RUNNING


def main() -> None:
    """A further worker that launch.run_study started: same grid, same parent run, no progress bar of its own."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="the study-<run id>.json run_study wrote")
    parser.add_argument("--parent", required=True, help="the study run the cells belong to")
    args = parser.parse_args()
    saved = json.loads(Path(args.config).read_text())
    cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
    failed = Runner(saved["study"], cfg, args.parent, saved["experiment_id"]).run()
    for key, error in failed.items():
        print(f"error: cell {key} failed: {error}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
