"""mlflow run . -e analyze: a study's curves, tables, box plots and paired tests, read from the tracking store."""

import argparse

from analysis.report import analyze
from cyto_ssrl.cli import main, optional


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", required=True, help="the study id")
    parser.add_argument("--output", default="", help="folder for figures and tables (default outputs/analysis/<id>)")
    parser.add_argument("--ratio", default="", help="the ratio of the box plots against the external baseline")
    args = parser.parse_args()
    folder = analyze(args.study, optional(args.output) or f"outputs/analysis/{args.study}", optional(args.ratio))
    print(f"analysis of study {args.study}: figures and tables in {folder}")


if __name__ == "__main__":
    main(run)
