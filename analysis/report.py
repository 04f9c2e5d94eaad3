"""Every figure and table of one study's downstream results, written to a folder and logged as artifacts of one
`analysis` run (`mlflow run . -e analyze -P study=ID`, or the study's last cell)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import METRIC_LABELS, plot_boxes, plot_curves
from analysis.query import downstream_results, pretrained, representation_results
from analysis.stats import ALPHA, drops, markdown_drops
from analysis.tables import markdown_table, numeric_table, summary
from cyto_ssrl import tracking
from cyto_ssrl.data.pools import parse_ratio, ratio_label
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.errors import CytoError


def analyze(study_id: str, output_dir: str | Path, ratio: str | None = None, metrics=METRIC_NAMES) -> Path:
    """Write results.csv, curves, tables, box plots, statistics and a README for `study_id` into `output_dir` and
    log them to an `analysis` run; returns `output_dir`. `ratio` is the box plots' ratio (default: smallest r)."""
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise CytoError(f"unknown metric {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    # Everything that can fail on the input fails here, before the analysis run is opened.
    results = downstream_results(study_id)
    box_ratio = _box_ratio(results, ratio, study_id)
    output = Path(output_dir)
    params = {"study": study_id, "output": output, "ratio": ratio_label(box_ratio), "metrics": ",".join(metrics)}
    with tracking.stage_run("analysis", params, tags={"study": study_id}, run_name=f"analysis-{study_id}"):
        files = [tracking.log_table(results, output / "results.csv")]
        representation = representation_results(study_id)
        if not representation.empty:
            files += [tracking.log_table(representation.round(4), output / f"representation.{suffix}")
                      for suffix in ("md", "csv")]  # fmt: skip
        for metric in metrics:
            files += _metric_outputs(results, metric, box_ratio, study_id, output)
        readme = output / "README.md"
        readme.write_text(readme_text(study_id, results, box_ratio, metrics, files))
        tracking.log_artifact(readme)
    return output


def _box_ratio(results: pd.DataFrame, ratio: str | None, study_id: str) -> int:
    present = sorted(pretrained(results)["ratio_r"].unique())
    if ratio is None:
        return present[0]
    r = parse_ratio(ratio)
    if r not in present:
        raise CytoError(f"ratio {ratio_label(r)} has no downstream runs in study {study_id}; "
                        f"it has {', '.join(map(ratio_label, present))}")  # fmt: skip
    return r


def _metric_outputs(results: pd.DataFrame, metric: str, box_ratio: int, study_id: str, output: Path) -> list[Path]:
    table = summary(results, metric)
    stats = drops(results, metric)
    box_name = f"boxplot_{metric}_{ratio_label(box_ratio).replace(':', '-')}.png"
    return [
        tracking.log_figure(plot_curves(results, metric, study_id), output / f"curves_{metric}.png"),
        tracking.log_table(markdown_table(table), output / f"table_{metric}.md"),
        tracking.log_table(numeric_table(table), output / f"table_{metric}.csv"),
        tracking.log_figure(plot_boxes(results, metric, box_ratio, study_id), output / box_name),
        tracking.log_table(markdown_drops(stats), output / f"stats_{metric}.md"),
        tracking.log_table(stats, output / f"stats_{metric}.csv"),
    ]


# What each kind of file holds, by the start of its name.
FILE_DESCRIPTIONS = {
    "results": "every finished downstream run: one row per run, metrics as fractions (0-1)",
    "representation": "frozen features of each backbone: best k-NN weighted F1, k-means agreement with the labels "
                      "(AMI, ARI, purity), 5-fold linear-SVM accuracy and AUC",
    "curves": "metric (%) against the pre-training ratio, one line per label budget, mean ± std over resamplings; "
              "dashed: external baseline (paper Fig. 7)",
    "table": "mean ± std (%) over resamplings, rows method x mode x budget, columns ratio (paper Tables 5/6); "
             "the CSV holds the numbers",
    "boxplot": "metric (%) per budget at one ratio beside the external baseline, residuals below (paper Fig. 4/5)",
    "stats": "drop (percentage points) from 1:1, or the smallest ratio evaluated, to each ratio; paired t-test "
             f"over resamplings, alpha {ALPHA}; p-values are not corrected for multiple comparisons",
}  # fmt: skip


def readme_text(study_id: str, results: pd.DataFrame, box_ratio: int, metrics, files: list[Path]) -> str:
    counts = results.groupby(["method", "mode"]).size().to_dict()
    lines = [f"# Analysis of study {study_id}", "",
             f"{len(results)} finished downstream runs, read from the MLflow tracking store: "
             + ", ".join(f"{method} {mode} {n}" for (method, mode), n in counts.items()) + ".",
             f"Box plots show ratio {ratio_label(box_ratio)}. "
             f"Metrics: {', '.join(METRIC_LABELS[m] for m in metrics)}.", "",
             "| files | content |", "|---|---|"]  # fmt: skip
    for kind, description in FILE_DESCRIPTIONS.items():
        names = [path.name for path in files if path.stem.split("_")[0] == kind]
        lines.append(f"| {', '.join(names)} | {description} |")
    return "\n".join(lines) + "\n"
