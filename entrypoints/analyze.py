"""mlflow run . -e analyze: a study's curves, tables, box plots and paired tests, read from the tracking store."""

from dataclasses import dataclass

from analysis.report import analyze
from cyto_ssrl.cli import main, param, parse_params
from cyto_ssrl.downstream.metrics import METRIC_NAMES


@dataclass
class Params:
    study: str = param("demo", "the study id (the study tag of its runs)")
    output: str = param("per-study", "folder for figures and tables; 'per-study': outputs/analysis/<study>", True)
    ratio: str = param("smallest", "ratio of the box plots against the baseline; 'smallest': the smallest r", True)
    metrics: str = param(",".join(METRIC_NAMES), "comma-separated subset of the metrics")


def run() -> None:
    p = parse_params(Params, __doc__)
    metrics = tuple(m.strip() for m in p.metrics.split(",") if m.strip())
    folder = analyze(p.study, p.output or f"outputs/analysis/{p.study}", p.ratio, metrics)
    print(f"analysis of study {p.study}: figures and tables in {folder}")


if __name__ == "__main__":
    main(run)
