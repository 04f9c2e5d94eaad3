"""mlflow run . -e analyze: a study's curves, tables, box plots and paired tests, read from the tracking store."""

import argparse

from analysis.report import analyze
from cyto_ssrl.cli import main, optional
from cyto_ssrl.downstream.metrics import METRIC_NAMES


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", required=True, help="the study id (the study tag of its runs)")
    parser.add_argument("--output", default="", help="folder for figures and tables (default outputs/analysis/<id>)")
    parser.add_argument("--ratio", default="", help="ratio of the box plots against the baseline (default: smallest)")
    parser.add_argument("--metrics", default=",".join(METRIC_NAMES), help="comma-separated subset of the metrics")
    args = parser.parse_args()
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    folder = analyze(args.study, optional(args.output) or f"outputs/analysis/{args.study}", optional(args.ratio),
                     metrics)  # fmt: skip
    print(f"analysis of study {args.study}: figures and tables in {folder}")


if __name__ == "__main__":
    main(run)
