"""The study: every cell of the grid is one MLflow run, so a study resumes, grows and runs in parallel.

A cell is one unit of work with a key (`pretrain/mae/1:10/s0`); its run carries the tags `study=<id>` and
`study_cell=<key>`, and the cell is done when such a run is FINISHED. Workers share the grid through the tracking
store alone. A worker claims a cell by creating its run and then looking again: if another live run of the cell
exists it deletes its own and moves on. Two workers that claim at once see each other and both back off, so no
cell runs twice. A claim stays live while its worker beats (a `heartbeat` tag renewed every HEARTBEAT_S); the
claims of a killed worker go stale, are marked FAILED and are taken over.

    python -m cyto_ssrl.study STUDY_DIR/study.json --parent RUN_ID    # one extra worker (run_study starts these)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from cyto_ssrl import tracking
from cyto_ssrl.config import (PRETRAIN_PRESETS, STUDY_AXES, STUDY_PRESETS, TILE_PRESETS, PretrainConfig,
                              StudyConfig, flatten, preset, pretrain_preset_name)  # fmt: skip
from cyto_ssrl.data.pools import parse_ratio, ratio_label
from cyto_ssrl.downstream.budgets import budget_label, check_budget
from cyto_ssrl.downstream.config import DOWNSTREAM_PRESETS, TRAINED_MODES
from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import save_weights
from cyto_ssrl.methods import METHODS, create_backbone

HEARTBEAT_S = 10.0
STALE_S = 60.0  # a RUNNING claim whose heartbeat is older is a dead worker's
POLL_S = 5.0  # how often a worker with nothing to do looks for work again
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which worker ran a cell, in its run's tags


@dataclass(frozen=True)
class Cell:
    """One unit of the grid. `model` is the key of the cell that registers the backbone a downstream cell uses."""

    stage: str  # tiles | pools | pretrain | external | tune | downstream | analyses | analysis
    ratio: str = ""
    method: str = ""
    seed: int = 0
    backbone: str = ""
    model: str = ""
    mode: str = ""
    budget: float = 0.0
    resample: int = 0
    needs: tuple[str, ...] = ()
    digest: str = ""  # analysis: the finished runs it summarises, so a grown or repaired study is analysed again

    @property
    def key(self) -> str:
        return {
            "tiles": "tiles",
            "pools": f"pools/{self.ratio}/s{self.seed}",
            "pretrain": f"pretrain/{self.method}/{self.ratio}/s{self.seed}",
            "external": f"external/{self.backbone}",
            "tune": f"tune/{self.model}/{self.mode}/b{budget_label(self.budget)}",
            "downstream": f"downstream/{self.model}/{self.mode}/b{budget_label(self.budget)}/r{self.resample}",
            "analyses": f"analyses/{self.model}",
            "analysis": f"analysis/{self.digest}",
        }[self.stage]


# --- configuration ---


def load_config(name: str, **axes) -> StudyConfig:
    """A named preset or a JSON file of StudyConfig fields (over the demo's), with the non-empty `axes` applied."""
    if name in STUDY_PRESETS:
        fields = {}
        base = name
    elif name.endswith(".json") and Path(name).is_file():
        fields = json.loads(Path(name).read_text())
        base = "demo"
    else:
        raise CytoError(f"unknown study preset {name!r}; choose one of {sorted(STUDY_PRESETS)} or a .json file")
    cfg = preset(STUDY_PRESETS, base, **fields, **{k: v for k, v in axes.items() if v not in (None, ())})
    # JSON gives lists; tuples keep the settings' logged form the same however the study was started.
    return dataclasses.replace(cfg, **{f.name: tuple(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                                       if isinstance(getattr(cfg, f.name), list)})  # fmt: skip


def settings(cfg: StudyConfig) -> dict[str, str]:
    """The fields every cell of one study must share (the axes may grow), as logged params `cfg.<field>`."""
    return {f"cfg.{k}": str(v) for k, v in flatten(cfg).items() if k not in STUDY_AXES}


def pretrain_config(cfg: StudyConfig, method: str) -> tuple[str, PretrainConfig]:
    name = pretrain_preset_name(cfg.pretrain_preset, method)
    return name, preset(PRETRAIN_PRESETS, name, method=method, **cfg.pretrain_overrides)


def external_weights(cfg: StudyConfig) -> dict[str, str]:
    """backbone -> 'random' or a weights file, from `external`: '', 'random', a path, or 'backbone=path,...'."""
    backbones = sorted({pretrain_config(cfg, method)[1].backbone for method in cfg.methods})
    if cfg.external in ("", "random"):
        return {b: cfg.external for b in backbones if cfg.external}
    if "=" not in cfg.external:
        return {b: cfg.external for b in backbones}
    given = dict(item.split("=", 1) for item in cfg.external.split(","))
    unknown = set(given) - set(backbones)
    if unknown:
        raise CytoError(f"external weights for {sorted(unknown)}, but the study's backbones are {backbones}")
    return given


def validate(cfg: StudyConfig, study_id: str, workers: int) -> None:
    """Every input the grid depends on, checked before any run starts."""
    if not re.fullmatch(r"[\w.-]+", study_id):
        raise CytoError(f"study id {study_id!r} may hold only letters, digits, '_', '-' and '.'")
    _check_axes(cfg)
    _check_inputs(cfg)
    if workers < 1:
        raise CytoError(f"workers must be at least 1, got {workers}")
    if workers > 1 and not tracking.configure().startswith("http"):
        raise CytoError(f"workers={workers} share the grid through a tracking server: start one with "
                        "`python -m entrypoints.server` and set MLFLOW_TRACKING_URI=http://127.0.0.1:5000")  # fmt: skip


def _check_axes(cfg: StudyConfig) -> None:
    if not cfg.ratios or not cfg.methods or not cfg.seeds:
        raise CytoError("a study needs at least one ratio, method and seed")
    for ratio in cfg.ratios:
        parse_ratio(ratio)
    for method in cfg.methods:
        if method not in METHODS:
            raise CytoError(f"unknown method {method!r}; choose from {'|'.join(METHODS)}")
        pretrain_config(cfg, method)
    bad_modes = set(cfg.modes) - set(TRAINED_MODES)
    if bad_modes:
        raise CytoError(f"unknown downstream mode(s) {sorted(bad_modes)}; choose from {'|'.join(TRAINED_MODES)}")
    for budget in cfg.budgets:
        check_budget(budget)
    if cfg.resamples < 1:
        raise CytoError(f"resamples must be at least 1, got {cfg.resamples}")
    if cfg.tune_trials < 0:
        raise CytoError(f"tune_trials must be 0 (no tuning) or more, got {cfg.tune_trials}")


def _check_inputs(cfg: StudyConfig) -> None:
    preset(DOWNSTREAM_PRESETS, cfg.downstream_preset)
    if cfg.manifest:
        if not Path(cfg.manifest).is_file():
            raise CytoError(f"tile manifest {cfg.manifest} does not exist")
    else:
        preset(TILE_PRESETS, cfg.tile_preset)
        if cfg.source not in ("synthetic", "slides", "cells"):
            raise CytoError(f"unknown tile source {cfg.source!r}; choose slides, cells or synthetic")
        if cfg.source != "synthetic" and not (cfg.input and Path(cfg.input).is_dir()):
            raise CytoError(f"source {cfg.source!r} needs input, a folder of slides or cell crops ({cfg.input} is not)")
    for weights in external_weights(cfg).values():
        if weights != "random" and not Path(weights).is_file():
            raise CytoError(f"external weights {weights} do not exist (nothing is downloaded: give a local file)")


def check_settings(study_id: str, cfg: StudyConfig) -> None:
    """Refuse to continue a study id with other settings: its tables would mix incomparable runs."""
    earlier = tracking.find_runs("study", study=study_id)
    if earlier.empty:
        return
    first = earlier.sort_values("start_time").iloc[0]
    differ = [f"{key.removeprefix('cfg.')} was {first[f'params.{key}']!r}, now {value!r}"
              for key, value in settings(cfg).items()
              if f"params.{key}" in first and pd.notna(first[f"params.{key}"]) and first[f"params.{key}"] != value]  # fmt: skip
    if differ:
        raise CytoError(f"study {study_id!r} exists with other settings ({'; '.join(differ)}); "
                        "choose another study id or the same settings")  # fmt: skip


# --- the grid ---


def plan(cfg: StudyConfig) -> list[Cell]:
    """Every cell of the grid, each after the cells it needs."""
    tiles = () if cfg.manifest else (Cell("tiles"),)
    need_tiles = tuple(c.key for c in tiles)
    pools, models = [], []
    for seed in cfg.seeds:
        for ratio in (ratio_label(parse_ratio(r)) for r in cfg.ratios):
            pool = Cell("pools", ratio=ratio, seed=seed, needs=need_tiles)
            pools.append(pool)
            models += [Cell("pretrain", ratio=ratio, method=m, seed=seed, needs=(pool.key,)) for m in cfg.methods]
    models += [Cell("external", backbone=b) for b in external_weights(cfg)]
    evaluations = [cell for model in models for cell in _evaluations(cfg, model.key, (model.key, *need_tiles))]
    cells = [*tiles, *pools, *models, *evaluations]
    # The analysis cell's digest names the runs it summarises; workers fill it in once they are all finished.
    return [*cells, Cell("analysis", needs=tuple(c.key for c in cells))]


def _evaluations(cfg: StudyConfig, model: str, needs: tuple[str, ...]) -> list[Cell]:
    """The downstream cells of one registered backbone, each budget's blr search first when tuned, and its analyses."""
    cells = []
    for mode in cfg.modes:
        for budget in cfg.budgets:
            budget_needs = needs
            if cfg.tune_trials:
                tune = Cell("tune", model=model, mode=mode, budget=budget, needs=needs)
                cells.append(tune)
                budget_needs = (*needs, tune.key)
            cells += [Cell("downstream", model=model, mode=mode, budget=budget, resample=resample, needs=budget_needs)
                      for resample in range(cfg.resamples)]  # fmt: skip
    if cfg.analyses:
        cells.append(Cell("analyses", model=model, needs=needs))
    return cells


def study_dir(cfg: StudyConfig, study_id: str) -> Path:
    return Path(cfg.output).resolve() / study_id


# --- workers ---


class Worker:
    """Takes ready cells of one study, one at a time, until none is left that it can do."""

    def __init__(self, study_id: str, cfg: StudyConfig, parent_run_id: str, experiment_id: str,
                 progress: bool = False):  # fmt: skip
        self.study_id, self.cfg = study_id, cfg
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.cells = plan(cfg)
        self.dir = study_dir(cfg, study_id)
        self.bar = tqdm(total=len(self.cells), desc=f"study {study_id}", unit="cell", disable=False) if progress else None
        self.failed: dict[str, str] = {}
        self.runs = pd.DataFrame()
        self.current: dict[str, str] = {}  # cell key -> its finished run made from the current runs of its needs
        self._setups: dict = {}
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

    def _say_waiting(self, held: list[str]) -> None:
        if held != self._held:
            tqdm.write(f"waiting for {len(held)} cell(s) other workers hold, e.g. {held[0]} (a killed worker's cells "
                       f"are taken over {STALE_S:.0f} s after its last heartbeat)")  # fmt: skip
            self._held = held

    def unfinished(self) -> list[str]:
        done, _ = self._refresh()
        return [c.key for c in self.cells if c.key not in done]

    def _refresh(self) -> tuple[set[str], set[str]]:
        """(finished cell keys, cell keys a live worker holds); logs progress to the study run."""
        self.runs = cell_runs(self.study_id)
        self.current = self._current_runs()
        done = set(self.current)
        running = self.runs[is_live(self.runs)]
        n_done = sum(c.key in done for c in self.cells)
        if n_done != self._logged_done:  # a point per change, not per poll
            tracking.log_metrics({"study/cells_done": n_done, "study/cells_total": len(self.cells)}, step=n_done,
                                 run_id=self.parent_run_id)  # fmt: skip
            self._logged_done = n_done
        if self.bar is not None:
            self.bar.update(n_done - self.bar.n)
        return done, set(running["key"])

    def _current_runs(self) -> dict[str, str]:
        """Cell key -> its finished run made from the current runs of the cells it needs.

        A finished run whose inputs were run again since (a deleted backbone trained anew, a pool re-drawn) is stale:
        its cell is to do again, on the new inputs, and `_claim` deletes the stale run so no analysis reads it.
        """
        finished = self.runs[self.runs["status"] == "FINISHED"]
        current: dict[str, str] = {}
        for i, cell in enumerate(self.cells):  # each after the cells it needs
            if not set(cell.needs) <= current.keys():
                continue
            if cell.stage == "analysis":  # keyed by the runs it summarises: new or re-run cells, new analysis
                cell = self.cells[i] = dataclasses.replace(cell, digest=_digest(current[k] for k in cell.needs))
            runs = finished[(finished["key"] == cell.key) & self._made_from_current(finished, cell, current)]
            if not runs.empty:
                current[cell.key] = runs["run_id"].iloc[0]
        return current

    def _made_from_current(self, runs: pd.DataFrame, cell: Cell, current: dict[str, str]) -> pd.Series:
        """Which of `runs` were made from the current runs of `cell`'s needs (a run of an older version of this
        project, without the tag, counts as current)."""
        if "tags.study_inputs" not in runs:
            return pd.Series(True, index=runs.index)
        inputs = runs["tags.study_inputs"]
        return inputs.isna() | (inputs == self._inputs(cell, current))

    @staticmethod
    def _inputs(cell: Cell, current: dict[str, str]) -> str:
        return _digest(current[key] for key in cell.needs)

    def _take(self, cell: Cell) -> None:
        run_id = self._claim(cell)
        if run_id is None:
            time.sleep(random.uniform(0.2, 2.0))  # another worker claimed it; a random pause breaks ties
            return
        try:
            with heartbeat(run_id), tracking.claimed_run(run_id):
                getattr(self, f"_do_{cell.stage}")(cell)
        except Exception as exc:  # the cell's run is FAILED; cells that do not need it go on
            self.failed[cell.key] = str(exc)
            tqdm.write(f"cell {cell.key} failed: {exc}", file=sys.stderr)

    def _claim(self, cell: Cell) -> str | None:
        """Create the cell's run, then back off (deleting it) if another live run of the cell exists."""
        runs = cell_runs(self.study_id, cell.key)
        for dead in runs.loc[(runs["status"] == "RUNNING") & ~is_live(runs), "run_id"]:
            tracking.end_run(dead, "FAILED")  # its worker stopped beating: it was killed
        for stale in runs.loc[(runs["status"] == "FINISHED") & ~self._made_from_current(runs, cell, self.current),
                              "run_id"]:  # fmt: skip
            tqdm.write(f"cell {cell.key}: run {stale} used runs that have been replaced; it is deleted and the cell "
                       f"runs again (`mlflow runs restore --run-id {stale}` brings the old run back)")  # fmt: skip
            tracking.delete_run(stale)
        tags = {"stage": cell.stage, "study": self.study_id, "study_cell": cell.key, "heartbeat": time.time(),
                "study_worker": WORKER, "study_inputs": self._inputs(cell, self.current)}  # fmt: skip
        run_id = tracking.create_run(self.experiment_id, cell.key, tags, self.parent_run_id)
        others = cell_runs(self.study_id, cell.key)
        others = others[(others["run_id"] != run_id) & ((others["status"] == "FINISHED") | is_live(others))]
        if not others.empty:
            tracking.delete_run(run_id)
            return None
        return run_id

    def _output(self, key: str, tag: str) -> str:
        """A tag of the current run of cell `key`: what a later cell reads (manifest, pool path, model URI)."""
        return self.runs.loc[self.runs["run_id"] == self.current[key], f"tags.{tag}"].iloc[0]

    def _manifest(self) -> str:
        return self.cfg.manifest or self._output("tiles", "manifest")

    # One method per stage: the stage functions do the work and the logging; the claimed run is theirs.

    def _do_tiles(self, cell: Cell) -> None:
        from cyto_ssrl.stages import run_tiles

        cfg = self.cfg
        run_tiles(cfg.source, cfg.input, str(self.dir / "tiles"), cfg.tile_preset, cfg.annotations)

    def _do_pools(self, cell: Cell) -> None:
        from cyto_ssrl.stages import run_pools

        run_pools(self._manifest(), cell.ratio, self.cfg.pool_size, cell.seed, output_dir=str(self.dir / "pools"))

    def _do_pretrain(self, cell: Cell) -> None:
        from cyto_ssrl.stages import run_pretrain

        cfg = self.cfg
        pool = self._output(f"pools/{cell.ratio}/s{cell.seed}", "pool_path")
        run_pretrain(cell.method, cell.ratio, cfg.pretrain_preset, pool=pool, pool_size=cfg.pool_size,
                     seed=cell.seed, num_processes=cfg.num_processes, output_dir=str(self.dir / "pretrain"),
                     continue_from=self._checkpoint(cell), **cfg.pretrain_overrides)  # fmt: skip

    def _checkpoint(self, cell: Cell) -> str | None:
        """The job folder of the cell's newest failed run that left a checkpoint: a killed training goes on from it."""
        runs = cell_runs(self.study_id, cell.key)  # fresh: _claim has just marked a dead worker's run FAILED
        if "tags.job_dir" not in runs:  # no run of the cell got as far as its job folder
            return None
        failed = runs[(runs["status"] == "FAILED") & runs["tags.job_dir"].notna()]
        for _, run in failed.sort_values("start_time", ascending=False).iterrows():
            if (Path(run["tags.job_dir"]) / "epoch.json").exists():
                tqdm.write(f"cell {cell.key}: training continues from the last checkpoint of run {run['run_id']}")
                return run["tags.job_dir"]
        return None

    def _do_external(self, cell: Cell) -> None:
        from cyto_ssrl.stages import register_external

        methods = [m for m in self.cfg.methods if pretrain_config(self.cfg, m)[1].backbone == cell.backbone]
        preset_name, pretrain_cfg = pretrain_config(self.cfg, methods[0])
        weights = external_weights(self.cfg)[cell.backbone]
        if weights == "random":
            weights = random_init_weights(pretrain_cfg, self.dir / "external")
        register_external(weights, methods[0], preset_name, baseline_for=",".join(methods),
                          **self.cfg.pretrain_overrides)  # fmt: skip

    def _setup(self, model_key: str):
        """The downstream setup of a registered version, made once per worker (its features are cached on disk)."""
        from cyto_ssrl.downstream.run import prepare

        run_id = self.current[model_key]  # a backbone trained again is a new setup
        if run_id not in self._setups:
            uri = self._output(model_key, "model_uri")
            seed = int(model_key.rpartition("/s")[2]) if model_key.startswith("pretrain/") else self.cfg.seeds[0]
            self._setups[run_id] = prepare(uri, self.cfg.downstream_preset, self._manifest(), seed)
        return self._setups[run_id]

    def _do_tune(self, cell: Cell) -> None:
        from cyto_ssrl.downstream.tune import tune_setup

        tune_setup(self._setup(cell.model), cell.mode, cell.budget, self.cfg.tune_trials, self.cfg.tune_storage)

    def _do_downstream(self, cell: Cell) -> None:
        from cyto_ssrl.downstream.run import base_lr, budget_run

        setup = self._setup(cell.model)
        blr = base_lr(setup, cell.mode, cell.budget, "tuned" if self.cfg.tune_trials else None, self.cfg.tune_storage)
        budget_run(setup, cell.mode, cell.budget, cell.resample, blr, None)

    def _do_analyses(self, cell: Cell) -> None:
        from cyto_ssrl.downstream.run import analyses_run

        analyses_run(self._setup(cell.model))

    def _do_analysis(self, cell: Cell) -> None:
        from analysis.report import analyze

        analyze(self.study_id, self.dir / "analysis")


def _digest(run_ids) -> str:
    return hashlib.sha256(" ".join(sorted(run_ids)).encode()).hexdigest()[:12]


def cell_runs(study_id: str, key: str | None = None) -> pd.DataFrame:
    """The cell runs of a study (every status but deleted): columns run_id, key, status, heartbeat and tags."""
    runs = tracking.find_runs(study=study_id, **({"study_cell": key} if key else {}))
    if runs.empty or "tags.study_cell" not in runs:
        return pd.DataFrame(columns=["run_id", "key", "status", "heartbeat"])
    runs = runs[runs["tags.study_cell"].notna()].copy()
    runs["key"] = runs["tags.study_cell"]
    runs["heartbeat"] = pd.to_numeric(runs["tags.heartbeat"], errors="coerce").fillna(0.0)
    return runs


def is_live(runs: pd.DataFrame) -> pd.Series:
    """RUNNING with a recent heartbeat: a worker holds the cell."""
    return (runs["status"] == "RUNNING") & (runs["heartbeat"] > time.time() - STALE_S)


@contextlib.contextmanager
def heartbeat(run_id: str):
    """Renew the claim's `heartbeat` tag from a thread while the cell works (training holds no lock on it)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; STALE_S allows several
                tracking.set_run_tag(run_id, "heartbeat", time.time())

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def random_init_weights(pretrain_cfg, folder: Path) -> str:
    """A seeded randomly initialised backbone as a weights file: the 'does pre-training help at all' baseline."""
    path = folder / pretrain_cfg.backbone / f"random-init-{pretrain_cfg.img_size}px.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        backbone = create_backbone(pretrain_cfg.backbone, pretrain_cfg.img_size, pretrain_cfg.patch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(backbone, path)  # concurrent cells may write it at once: each writes the same seeded weights
    return str(path)


# --- one study run ---


@contextlib.contextmanager
def quiet_bars():
    """Only the study's bar: the stages' own bars (tiling, training), in this process and its children, stay off."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous


def run_study(cfg: StudyConfig, study_id: str, preset_name: str = "demo", workers: int = 1) -> Path:
    """Run (or continue, or grow) study `study_id`; returns the folder of its curves and tables.

    The call is one `study` run (under `mlflow run`, the run MLflow made). It works through the grid itself and,
    with workers > 1, starts workers - 1 more processes on the same grid.
    """
    validate(cfg, study_id, workers)
    check_settings(study_id, cfg)
    folder = study_dir(cfg, study_id)
    params = {"study": study_id, "preset": preset_name, "workers": workers, **settings(cfg),
              **{f"cfg.{axis}": getattr(cfg, axis) for axis in STUDY_AXES}}  # fmt: skip
    _fail_dead_study_runs(study_id)
    tags = {"study": study_id, "heartbeat": time.time()}
    with quiet_bars(), tracking.stage_run("study", params, tags=tags, run_name=f"study-{study_id}"):
        run_id, experiment_id = tracking.active_run_info()
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / f"study-{run_id}.json"
        config_file.write_text(json.dumps({"study": study_id, "experiment_id": experiment_id,
                                           "cfg": dataclasses.asdict(cfg)}, indent=1))  # fmt: skip
        extra = [subprocess.Popen([sys.executable, "-m", "cyto_ssrl.study", str(config_file), "--parent", run_id],
                                  env=tracking.tracking_env()) for _ in range(workers - 1)]  # fmt: skip
        worker = Worker(study_id, cfg, run_id, experiment_id, progress=True)
        with heartbeat(run_id):
            failed = worker.run()
            failed_workers = sum(process.wait() != 0 for process in extra)
        if failed or failed_workers:
            raise CytoError(f"study {study_id}: {_failures(failed)} and {failed_workers} other worker(s) failed; "
                            f"run the same command again to retry them")  # fmt: skip
        missing = worker.unfinished()
        if missing:
            raise CytoError(f"study {study_id}: {len(missing)} cell(s) not finished, e.g. {missing[0]}")
        analysis_run = worker.current[worker.cells[-1].key]
        tracking.set_tags({"analysis_dir": folder / "analysis", "analysis_run_id": analysis_run})
        describe(study_id, cfg, preset_name, experiment_id, analysis_run, len(worker.cells))
    print(f"study {study_id}: {len(worker.cells)} cells done; curves and tables in {folder / 'analysis'}")
    print(tracking.browse_hint(experiment_id))
    return folder / "analysis"


def describe(study_id: str, cfg: StudyConfig, preset_name: str, experiment_id: str, analysis_run: str,
             n_cells: int) -> None:  # fmt: skip
    """Descriptions the UI shows: the study run's (what it is, where its results are) and the experiment's (the
    project, and the analysis run of each of its studies)."""
    analysis = f"[analysis-{study_id}]({tracking.runs_page(experiment_id, analysis_run)})"
    tracking.set_description(
        f"Study **{study_id}** (preset `{preset_name}`), {n_cells} cells: pools at {', '.join(cfg.ratios)}; "
        f"pre-training {', '.join(cfg.methods)} (seeds {', '.join(map(str, cfg.seeds))}); downstream "
        f"{', '.join(cfg.modes)} at budgets {', '.join(map(budget_label, cfg.budgets))} % x {cfg.resamples} "
        f"resamplings.\n\nResults: the analysis run {analysis}: curves in its artifacts `figures/`, tables in "
        "`tables/`, paired tests in `stats/`, and a README.md that says what each file is.\n\nThe runs of this "
        f"study: search `tags.study = '{study_id}'`; group by `tags.model_label`, `params.mode`, `params.budget`; "
        "chart a metric such as `eval/acc` against the param `log10_ratio`.")  # fmt: skip
    studies = tracking.find_runs("study", "FINISHED", experiment_id=experiment_id)
    latest = {study_id: analysis_run}
    if not studies.empty and "tags.analysis_run_id" in studies:
        for _, run in studies.dropna(subset=["tags.analysis_run_id"]).sort_values("start_time", ascending=False).iterrows():
            latest.setdefault(run["tags.study"], run["tags.analysis_run_id"])
    lines = [f"- **{sid}**: analysis run [analysis-{sid}]({tracking.runs_page(experiment_id, rid)})"
             for sid, rid in sorted(latest.items())]  # fmt: skip
    tracking.set_experiment_description(experiment_id, "\n".join([
        "**cyto_ssrl**: how the positive:negative imbalance of the *unlabeled* pre-training pool affects "
        "self-supervised representation learning for cervical cytology (Liu et al., CSBJ 2026). Every step is a "
        "run: tiles, pools, pre-training (each backbone registered with its ratio), downstream linear probes and "
        "fine-tuning at label budgets, and one analysis run per study with the curves (`figures/`), tables "
        "(`tables/`) and paired tests (`stats/`).", "", "Studies:", *lines]))  # fmt: skip


def _failures(failed: dict[str, str]) -> str:
    """The failed cells in a line that stays readable when a whole column of the grid failed for one reason."""
    if not failed:
        return "no cell failed here"
    key, error = next(iter(failed.items()))
    others = f"; {len(failed) - 1} more, each reported above" if len(failed) > 1 else ""
    return f"{len(failed)} cell(s) failed here (first {key}: {error}{others})"


def _fail_dead_study_runs(study_id: str) -> None:
    """A killed study's own run stops beating like a dead worker's cell; mark it FAILED so it is not RUNNING forever."""
    runs = tracking.find_runs("study", "RUNNING", study=study_id)
    if runs.empty:
        return
    beats = pd.to_numeric(runs.get("tags.heartbeat", pd.Series(index=runs.index, dtype=str)), errors="coerce")
    for run_id in runs.loc[~(beats.fillna(0.0) > time.time() - STALE_S), "run_id"]:
        tracking.end_run(run_id, "FAILED")


def main() -> None:
    """An extra worker that run_study started: same grid, same parent run, no progress bar of its own."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", help="the study-<run id>.json run_study wrote")
    parser.add_argument("--parent", required=True, help="the study run the cells belong to")
    args = parser.parse_args()
    saved = json.loads(Path(args.config).read_text())
    cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["cfg"].items()})
    failed = Worker(saved["study"], cfg, args.parent, saved["experiment_id"]).run()
    for key, error in failed.items():
        print(f"error: cell {key} failed: {error}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
