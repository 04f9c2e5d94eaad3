"""A stage's run and what it logs: params (with the values actually used), metrics, artifacts, tables, figures,
images, datasets and the logged model it evaluates; and the descriptions and addresses the MLflow UI shows.

Under `mlflow run`, MLflow has already created the run and passes its id in `MLFLOW_RUN_ID`; `stage_run` then
continues that run instead of opening another.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric

from cyto_ssrl.tracking.store import configure, text_values, use_experiment


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: dict,
    tags: dict | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
):
    """Open (or continue: `run_id`) the run of one stage; FINISHED only when the body returns, FAILED on any exception.

    Nested inside an active run, it opens a child run; a study cell passes the run it created for the cell as
    `run_id`. `system_metrics` samples CPU, memory, disk and
    GPU (MLflow's system metrics, every SYSTEM_METRICS_INTERVAL_S) while the run is open.
    """
    configure()
    nested = mlflow.active_run() is not None
    if not nested and run_id is None:
        use_experiment()
    tags = text_values({"stage": stage, **(tags or {})})
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval())
    run = mlflow.start_run(
        run_id=run_id, run_name=run_name, nested=nested, tags=tags, log_system_metrics=system_metrics or None
    )
    try:
        log_params(_used_params(params, run.data.params))
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def _used_params(params: dict, logged: dict[str, str]) -> dict:
    """The params still to log. `mlflow run` has already logged the entry point's parameters as given, where an
    unset one reads as its MLproject default ('preset', 'synthetic' ...): the value actually used then goes
    beside it as `used.<name>`."""
    fresh = {key: value for key, value in params.items() if key not in logged}
    used = {
        f"used.{key}": value
        for key, value in params.items()
        if key in logged and logged[key] != _param_value(value) and f"used.{key}" not in logged
    }
    return {**fresh, **used}


def system_metrics_interval() -> float:
    """Seconds between system-metric samples: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, else 5 (MLflow's own 10 s
    leaves a fine-tuning run of a few seconds with none; a run shorter than the interval still has none)."""
    return float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or 5)


def log_params(params: dict) -> None:
    mlflow.log_params({key: _param_value(value) for key, value in params.items()})


def _param_value(value) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def set_tags(tags: dict) -> None:
    mlflow.set_tags(text_values(tags))


MAX_BATCH_METRICS = 1000  # MLflow's limit on the metrics of one log_batch request


def log_curve(points: list[tuple[int, dict]]) -> None:
    """Per-step metrics [(step, {name: value})] of the active run in as few requests as MLflow takes: a probe
    trains hundreds of epochs in a second, and one request per epoch cost more than the training."""
    timestamp = int(time.time() * 1000)
    metrics = [Metric(k, float(v), timestamp, step) for step, values in points for k, v in values.items()]
    run_id = mlflow.active_run().info.run_id
    for start in range(0, len(metrics), MAX_BATCH_METRICS):
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + MAX_BATCH_METRICS])


def log_metrics(
    metrics: dict, step: int | None = None, run_id: str | None = None, model_id: str | None = None, dataset=None
) -> None:
    """Metrics of the active run, or of `run_id` (a training worker logging into its launcher's run). With
    `model_id` and `dataset` (from log_dataset), MLflow files them under that logged model and dataset too."""
    values = {key: float(value) for key, value in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(values, step=step, model_id=model_id, dataset=dataset)
        return
    configure()
    timestamp = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, v, timestamp, step or 0) for k, v in values.items()])


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_table(df: pd.DataFrame, path: str | Path, artifact_path: str | None = None) -> Path:
    """Write a table to `path` (CSV, or Markdown when it ends in .md) and log it as an artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".md":
        path.write_text(df.to_markdown(index=False) + "\n")
    else:
        df.to_csv(path, index=False)
    log_artifact(path, artifact_path)
    return path


def log_figure(fig, path: str | Path, artifact_path: str | None = None) -> Path:
    """Save a matplotlib figure as PNG at `path` and log it as an artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    log_artifact(path, artifact_path)
    return path


def log_image(fig, key: str) -> None:
    """A matplotlib figure as an MLflow image under `key`: the chart view's image grid compares it across runs."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    buffer.seek(0)
    with Image.open(buffer) as image:
        mlflow.log_image(image.convert("RGB"), key=key, step=0, synchronous=True)


def log_ui_table(df: pd.DataFrame, artifact_file: str) -> None:
    """A table as MLflow's JSON table artifact, which the UI renders as a table (CSV files it shows as text)."""
    mlflow.log_table(df.reset_index(drop=True), artifact_file=artifact_file)


def log_dataset(df: pd.DataFrame, source: str | Path, name: str, context: str):
    """Log a table of tiles as an MLflow dataset input of the active run; returns the dataset (its .digest)."""
    with warnings.catch_warnings():
        # A local path matches two equivalent source types, and int columns trigger a hint about missing
        # values: neither matters for a manifest.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=str(source), name=name)
        try:
            mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:
            # Runs logging the same dataset at once (parallel cells, each with the evaluation partition): the store
            # looks for it, then inserts it, and the later insert fails on its unique key. It exists now; a second
            # call links it.
            mlflow.log_input(dataset, context=context)
    return dataset


def log_model_input(model_id: str) -> None:
    """Lineage the UI shows: the logged model this run evaluates (its Models column and the model's page)."""
    from mlflow.entities import LoggedModelInput

    mlflow.log_input(model=LoggedModelInput(model_id))


NOTE_TAG = "mlflow.note.content"  # what the UI shows, and edits, as a run's or experiment's description


def set_description(text: str, run_id: str | None = None) -> None:
    """The description (Markdown) of the active run, or of `run_id`."""
    if run_id is None:
        mlflow.set_tag(NOTE_TAG, text)
    else:
        MlflowClient().set_tag(run_id, NOTE_TAG, text)


def set_experiment_description(experiment_id: str, text: str) -> None:
    MlflowClient().set_experiment_tag(experiment_id, NOTE_TAG, text)


def runs_page(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's path (after its address) to an experiment's runs table or one run. `workflowType` opens the
    classic runs table: a fresh browser would otherwise land on MLflow 3's GenAI traces overview."""
    if run_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def browse_hint(experiment_id: str) -> str:
    """How to look at an experiment's runs: the address of the runs table, with the command that serves it."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"browse the runs: {uri.rstrip('/')}/{runs_page(experiment_id)}"
    return (
        f"browse the runs: `mlflow ui --backend-store-uri {uri}`, then open "
        f"http://127.0.0.1:5000/{runs_page(experiment_id)}"
    )
