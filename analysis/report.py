"""Every figure and table of one study's downstream results, written to a folder and logged as artifacts of one
`analysis` run (`mlflow run . -e analyze -P study=ID`, or the study's last cell)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.figures import METRIC_LABELS, plot_boxes, plot_curves
from analysis.query import downstream_results, pretrained, representation_results
from analysis.stats import ALPHA, baseline_gains, drops, markdown_drops
from analysis.tables import markdown_table, numeric_table, summary
from cyto_ssrl import tracking
from cyto_ssrl.data.pools import parse_ratio, ratio_label
from cyto_ssrl.downstream.budgets import budget_label
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.errors import CytoError


def analyze(
    study_id: str, output_dir: str | Path, ratio: str | None = None, metrics=METRIC_NAMES, run_id: str | None = None
) -> Path:
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
    with tracking.stage_run(
        "analysis", params, tags={"study": study_id}, run_name=f"analysis-{study_id}", run_id=run_id
    ):
        files = [_table(results, output / "tables" / "results.csv")]
        representation = representation_results(study_id)
        if not representation.empty:
            files += [
                _table(representation.round(4), output / "tables" / f"representation.{suffix}")
                for suffix in ("md", "csv")
            ]
        stats = {metric: drops(results, metric) for metric in metrics}
        for metric in metrics:
            files += _metric_outputs(results, metric, stats[metric], box_ratio, study_id, output)
        tracking.log_metrics(headline_metrics(stats))
        readme = output / "README.md"
        readme.write_text(readme_text(study_id, results, box_ratio, metrics, files, output))
        tracking.log_artifact(readme)
    return output


def _table(df: pd.DataFrame, path: Path) -> Path:
    """A table written to `path` and logged under the artifact folder of the same name (tables/, stats/); the
    Markdown ones (for people) also as MLflow's JSON table, which the UI renders as a table."""
    if path.suffix == ".md":
        tracking.log_ui_table(df.astype(str), f"{path.parent.name}/{path.stem}.json")
    return tracking.log_table(df, path, artifact_path=path.parent.name)


def _figure(fig, path: Path) -> Path:
    return tracking.log_figure(fig, path, artifact_path=path.parent.name)


def headline_metrics(stats_by_metric: dict[str, pd.DataFrame]) -> dict[str, float]:
    """Per method x mode x budget: the drop (percentage points) from the reference ratio (1:1) to the most
    imbalanced one, `drop_<metric>/<panel>-b<budget>`, and its p-value where there is one, `p_<metric>/...`:
    the numbers the runs table can show and sort without opening a file."""
    headline = {}
    for metric, stats in stats_by_metric.items():
        if stats.empty:
            continue
        stats = stats.assign(ratio_r=stats["ratio"].map(parse_ratio))
        last = stats.loc[stats.groupby(["method", "backbone", "mode", "budget"])["ratio_r"].idxmax()]
        for row in last.itertuples():
            key = f"{row.method}-{row.backbone}-{row.mode}-b{budget_label(row.budget)}"
            headline[f"drop_{metric}/{key}"] = row.drop_pp
            if pd.notna(row.p_value):
                headline[f"p_{metric}/{key}"] = row.p_value
    return headline


def _box_ratio(results: pd.DataFrame, ratio: str | None, study_id: str) -> int:
    present = sorted(pretrained(results)["ratio_r"].unique())
    if ratio is None:
        return present[0]
    r = parse_ratio(ratio)
    if r not in present:
        raise CytoError(
            f"ratio {ratio_label(r)} has no downstream runs in study {study_id}; "
            f"it has {', '.join(map(ratio_label, present))}"
        )
    return r


def _metric_outputs(
    results: pd.DataFrame, metric: str, stats: pd.DataFrame, box_ratio: int, study_id: str, output: Path
) -> list[Path]:
    table = summary(results, metric)
    box_name = f"boxplot_{metric}_{ratio_label(box_ratio).replace(':', '-')}.png"
    return [
        _figure(plot_curves(results, metric, study_id), output / "figures" / f"curves_{metric}.png"),
        _figure(plot_boxes(results, metric, box_ratio, study_id), output / "figures" / box_name),
        _table(markdown_table(table), output / "tables" / f"table_{metric}.md"),
        _table(numeric_table(table), output / "tables" / f"table_{metric}.csv"),
        _table(markdown_drops(stats), output / "stats" / f"stats_{metric}.md"),
        _table(stats, output / "stats" / f"stats_{metric}.csv"),
        *_baseline_tables(results, metric, output),
    ]


def _baseline_tables(results: pd.DataFrame, metric: str, output: Path) -> list[Path]:
    """Gain over the external baseline per pre-trained version x mode x budget; none without a baseline."""
    gains = baseline_gains(results, metric)
    if gains.empty:
        return []
    return [
        _table(markdown_drops(gains), output / "stats" / f"baseline_{metric}.md"),
        _table(gains, output / "stats" / f"baseline_{metric}.csv"),
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
    f"over resamplings; `p_holm` is Holm-corrected over all of the metric's drop tests, and `significant` means "
    f"p_holm < {ALPHA}",
    "baseline": "gain (percentage points) of each pre-trained version over its backbone's external (random-init) "
    "baseline per mode x budget, paired on the same budget draws (seed and resample); paired t-test, `p_holm` "
    f"Holm-corrected over all of the metric's baseline tests, `significant` means p_holm < {ALPHA}",
}


def readme_text(study_id: str, results: pd.DataFrame, box_ratio: int, metrics, files: list[Path], output: Path) -> str:
    counts = results.groupby(["method", "mode"]).size().to_dict()
    lines = [
        f"# Analysis of study {study_id}",
        "",
        f"{len(results)} finished downstream runs, read from the MLflow tracking store: "
        + ", ".join(f"{method} {mode} {n}" for (method, mode), n in counts.items())
        + ".",
        f"Box plots show ratio {ratio_label(box_ratio)}. "
        f"Metrics: {', '.join(METRIC_LABELS[m] for m in metrics)}. The headline drops (1:1 to the most "
        "imbalanced ratio) and their p-values are also this run's metrics `drop_<metric>/...` and `p_<metric>/...`.",
        "",
        "| files | content |",
        "|---|---|",
    ]
    for kind, description in FILE_DESCRIPTIONS.items():
        names = [path.relative_to(output).as_posix() for path in files if path.stem.split("_")[0] == kind]
        lines.append(f"| {', '.join(names)} | {description} |")
    return "\n".join(lines) + "\n"
