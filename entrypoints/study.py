"""mlflow run . -e study: the whole grid of a preset, tiles to curves; resumable, and parallel on a tracking server."""

import argparse
from dataclasses import dataclass

from cyto_ssrl.cli import integer, main, param, parse_params
from cyto_ssrl.downstream.budgets import parse_budgets
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study

AXIS = "'preset': the preset's"


@dataclass
class Params:
    preset: str = param("demo", "demo | paper | herlev | cric | a .json file of StudyConfig fields")
    study: str = param("preset", "study id; 'preset': named after the preset", True)
    executor: str = param("preset", "where cells run: local | slurm | ray; 'preset': the preset's (local)", True)
    workers: int = param("engine", "at most this many cells at once (slurm, ray); 'engine': all it takes", True)
    ray_address: str = param("preset", "the Ray cluster (ray://HOST:10001 or HOST:6379); '' starts a local one", True)
    # The axes: a study grows by running it again with more of them.
    ratios: str = param("preset", f"e.g. 1:1,1:10,1:100; {AXIS}", True)
    methods: str = param("preset", f"e.g. mae,simclr; {AXIS}", True)
    seeds: str = param("preset", f"pre-training seeds, e.g. 0,1; {AXIS}", True)
    modes: str = param("preset", f"linear,finetune; {AXIS}", True)
    budgets: str = param("preset", f"label budgets in %, e.g. 100,50,10,5,1; {AXIS}", True)
    resamples: int = param("preset", f"budget draws per budget; {AXIS}", True)
    tune_trials: int = param(
        "preset",
        "Optuna trials of the downstream lr per version x mode x budget (a setting of "
        "the study, not an axis: a new study id)",
        True,
    )


def listed(text: str | None, kind=str) -> tuple | None:
    """'1:1,1:10' -> ('1:1', '1:10'); None -> None (the preset's)."""
    if text is None:
        return None
    try:
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    except argparse.ArgumentTypeError as exc:
        raise CytoError(f"{text!r}: {exc}") from None


def run() -> None:
    p = parse_params(Params, __doc__)
    cfg = load_config(
        p.preset,
        ratios=listed(p.ratios),
        methods=listed(p.methods),
        seeds=listed(p.seeds, integer),
        modes=listed(p.modes),
        budgets=parse_budgets(p.budgets) if p.budgets else None,
        resamples=p.resamples,
        tune_trials=p.tune_trials,
        executor=p.executor,
        ray_address=p.ray_address,
    )
    study_id = p.study or p.preset.removesuffix(".json").rpartition("/")[2]
    run_study(cfg, study_id, p.preset, p.workers)  # its closing lines say where to look


if __name__ == "__main__":
    main(run)
