"""mlflow run . -e tune: Optuna search of the base lr of one backbone, mode and label budget (validation accuracy)."""

import argparse

from cyto_ssrl.cli import integer, main, optional
from cyto_ssrl.downstream.config import TRAINED_MODES
from cyto_ssrl.downstream.tune import run_tune


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--mode", default="linear", help=" | ".join(TRAINED_MODES))
    parser.add_argument("--budget", type=float, default=1.0, help="label budget, %% of the downstream partition")
    parser.add_argument("--n-trials", type=integer, default=10)
    parser.add_argument("--storage", default="", help="Optuna RDB URL (default: optuna.db beside the tracking store)")
    parser.add_argument("--preset", default="tiny", help="tiny | paper")
    parser.add_argument("--manifest", default="", help="tile manifest or tiles run id (default: the model's lineage)")
    parser.add_argument("--seed", type=integer, default=0)
    args = parser.parse_args()
    run_id, blr = run_tune(args.model_uri, args.mode, args.budget, args.n_trials, optional(args.storage),
                           args.preset, optional(args.manifest), args.seed)  # fmt: skip
    print(f"tune run {run_id}: best blr {blr:.3g}")


if __name__ == "__main__":
    main(run)
