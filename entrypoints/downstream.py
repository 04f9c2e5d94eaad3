"""mlflow run . -e downstream: linear probe, fine-tuning or representation analyses of a registered backbone."""

import argparse

from cyto_ssrl.cli import integer, main, optional
from cyto_ssrl.downstream.budgets import parse_budgets
from cyto_ssrl.downstream.run import MODES, parse_lr, run_downstream


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--mode", default="linear", help=" | ".join(MODES))
    parser.add_argument("--budgets", default="100,50,10,5,1", help="label budgets, %% of the downstream partition")
    parser.add_argument("--resamples", type=integer, default=5, help="budget draws per budget")
    parser.add_argument("--preset", default="tiny", help="tiny | paper")
    parser.add_argument("--lr", default="", help="absolute lr, or 'tuned' for the best blr of a tune study "
                        "(default: the preset's blr)")  # fmt: skip
    parser.add_argument("--manifest", default="", help="tile manifest or tiles run id (default: the model's lineage)")
    parser.add_argument("--seed", type=integer, default=0)
    args = parser.parse_args()
    run_id = run_downstream(args.model_uri, args.mode, parse_budgets(args.budgets), args.resamples, args.preset,
                            parse_lr(args.lr), optional(args.manifest), args.seed)  # fmt: skip
    print(f"downstream run {run_id}: {args.mode} of {args.model_uri}")


if __name__ == "__main__":
    main(run)
