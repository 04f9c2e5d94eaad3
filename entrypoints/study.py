"""mlflow run . -e study: the whole grid of a preset, tiles to curves; resumable, and parallel on a tracking server."""

import argparse

from cyto_ssrl import tracking
from cyto_ssrl.cli import integer, main, optional, optional_integer
from cyto_ssrl.downstream.budgets import parse_budgets
from cyto_ssrl.study import load_config, run_study


def listed(text: str, kind=str) -> tuple | None:
    """'1:1,1:10' -> ('1:1', '1:10'); '' -> None (the preset's)."""
    return tuple(kind(item.strip()) for item in text.split(",") if item.strip()) if optional(text) else None


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="demo", help="demo | paper | a .json file of StudyConfig fields")
    parser.add_argument("--study", default="", help="study id (default: the preset's name)")
    parser.add_argument("--workers", type=integer, default=1, help=">1 needs a tracking server (entrypoints.server)")
    # The axes: a study grows by running it again with more of them.
    parser.add_argument("--ratios", default="", help="e.g. 1:1,1:10,1:100")
    parser.add_argument("--methods", default="", help="e.g. mae,simclr")
    parser.add_argument("--seeds", type=lambda text: listed(text, integer), default="",
                        help="pre-training seeds, e.g. 0,1")  # fmt: skip
    parser.add_argument("--modes", default="", help="linear,finetune")
    parser.add_argument("--budgets", default="", help="label budgets in %%, e.g. 100,50,10,5,1")
    parser.add_argument("--resamples", type=optional_integer, default="", help="budget draws per budget")
    parser.add_argument("--tune-trials", type=optional_integer, default="",
                        help="Optuna trials of the downstream lr per version x mode x budget (a setting of the "
                        "study, not an axis: a new study id)")  # fmt: skip
    args = parser.parse_args()
    cfg = load_config(args.preset, ratios=listed(args.ratios), methods=listed(args.methods),
                      seeds=args.seeds, modes=listed(args.modes),
                      budgets=parse_budgets(args.budgets) if optional(args.budgets) else None,
                      resamples=args.resamples, tune_trials=args.tune_trials)  # fmt: skip
    study_id = optional(args.study) or args.preset.removesuffix(".json").rpartition("/")[2]
    folder = run_study(cfg, study_id, args.preset, args.workers)
    uri = tracking.configure()
    print(f"study {study_id} done: curves and tables in {folder}")
    print(f"browse the runs: mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else
          f"browse the runs: {uri}")  # fmt: skip


if __name__ == "__main__":
    main(run)
