"""Every MLflow call the project makes: tracking URI, runs, params, metrics, artifacts, datasets and the registry.

Default store: `sqlite:///mlruns.db` in the working directory with artifacts beside it; `MLFLOW_TRACKING_URI`
overrides it (an `mlflow server` for parallel work). Under `mlflow run`, MLflow has already created the run and
passes its id in `MLFLOW_RUN_ID`; `stage_run` then continues that run instead of opening another.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from tqdm import tqdm

from cyto_ssrl.errors import CytoError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_EXPERIMENT = "cyto_ssrl"


def configure() -> str:
    """Point MLflow at the project's store and check it answers before any work starts."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Two INFO lines per run with system metrics would cut through the progress bar; its warnings still show.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if uri.startswith("http"):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def store_uri() -> str:
    """The tracking store in use, for messages."""
    return mlflow.get_tracking_uri()


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read()
    except OSError as exc:
        raise CytoError(f"tracking server {uri} is unreachable ({exc}); start it or unset MLFLOW_TRACKING_URI") from None


def _set_experiment() -> None:
    # `mlflow run` fixes the experiment through MLFLOW_EXPERIMENT_ID; setting another one would be refused.
    if "MLFLOW_EXPERIMENT_ID" not in os.environ:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))


@contextlib.contextmanager
def stage_run(stage: str, params: dict, tags: dict | None = None, run_name: str | None = None,
              run_id: str | None = None, system_metrics: bool = False):  # fmt: skip
    """Open (or continue: `run_id`) the run of one stage; FINISHED only when the body returns, FAILED on any exception.

    Nested inside an active run, it opens a child run; a study cell passes the run it created for the cell as
    `run_id`. `system_metrics` samples CPU, memory, disk and
    GPU (MLflow's system metrics, every SYSTEM_METRICS_INTERVAL_S) while the run is open.
    """
    configure()
    nested = mlflow.active_run() is not None
    if not nested and run_id is None:
        _set_experiment()
    tags = _strings({"stage": stage, **(tags or {})})
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval())
    run = mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=tags,
                           log_system_metrics=system_metrics or None)  # fmt: skip
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
    used = {f"used.{key}": value for key, value in params.items()
            if key in logged and logged[key] != _param_value(value) and f"used.{key}" not in logged}  # fmt: skip
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


def _strings(tags: dict) -> dict[str, str]:
    """Tag values as text: a file store takes numbers and paths, a REST store (`mlflow server`) only str."""
    return {key: str(value) for key, value in tags.items()}


def set_tags(tags: dict) -> None:
    mlflow.set_tags(_strings(tags))


def log_metrics(metrics: dict, step: int | None = None, run_id: str | None = None, model_id: str | None = None,
                dataset=None) -> None:  # fmt: skip
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
        mlflow.log_input(dataset, context=context)
    return dataset


def log_model_input(model_id: str) -> None:
    """Lineage the UI shows: the logged model this run evaluates (its Models column and the model's page)."""
    from mlflow.entities import LoggedModelInput

    mlflow.log_input(model=LoggedModelInput(model_id))


def logged_model_id(version) -> str:
    """The logged model behind a registry version (MLflow 3: its source is `models:/<model id>`)."""
    return version.source.removeprefix("models:/")


def tracking_env() -> dict[str, str]:
    """Variables a child process (accelerate launch) needs to reach the same store, and nothing of `mlflow run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID",)}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


def pip_requirements() -> list[str]:
    """What a logged backbone needs to load: these packages at the versions that logged it."""
    import safetensors
    import timm
    import torchvision

    modules = {"torch": torch, "torchvision": torchvision, "timm": timm, "mlflow": mlflow, "safetensors": safetensors}
    # From the modules, not the distributions: mlflow-skinny and the full mlflow are both `mlflow` to import.
    return [f"{name}=={module.__version__.split('+')[0]}" for name, module in modules.items()]


@contextlib.contextmanager
def _logger_level(name: str, level: int):
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass
class Registration:
    """How a backbone goes into the registry: its registered model and alias, the logged model's name and the
    epoch whose metrics it carries, the version's tags and the descriptions the registry shows."""

    model_name: str
    alias: str
    logged_name: str  # letters, digits, '-', '_' (MLflow refuses '/', ':' and '.' in logged model names)
    step: int  # the last epoch: a logged model shows the run's metrics at this step
    tags: dict
    model_description: str
    version_description: str  # may hold {version}: filled in once the registry numbered the version


def register_backbone(backbone, registration: Registration, input_example) -> str:
    """Log the encoder into the active run and register it as a version with its tags, alias and descriptions;
    returns the version number.

    Registered last, after training finished. A version is never left without its tags or alias: if either
    fails, the version is deleted again.
    """
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = backbone(input_example).numpy()
    signature = infer_signature(input_example.numpy(), output)
    # Pickle, not pt2: downstream fine-tunes the backbone, and a pt2 export cannot go back to .train(). MLflow
    # warns about pickle on every call; the choice is deliberate, so that warning is silenced here.
    reg = registration
    with _logger_level("mlflow.pytorch", logging.ERROR):
        info = mlflow.pytorch.log_model(backbone, name=reg.logged_name, serialization_format="pickle",
                                        signature=signature, input_example=input_example.numpy(),
                                        pip_requirements=pip_requirements(), step=reg.step)  # fmt: skip
    with _mlflow_events_silenced():
        version = mlflow.register_model(info.model_uri, reg.model_name, tags=_strings(reg.tags))
    client = MlflowClient()
    try:
        missing = set(reg.tags) - set(client.get_model_version(reg.model_name, version.version).tags)
        if missing:
            raise RuntimeError(f"tags {sorted(missing)} were not stored")
        client.set_registered_model_alias(reg.model_name, reg.alias, version.version)
        client.update_registered_model(reg.model_name, description=reg.model_description)
        client.update_model_version(reg.model_name, version.version,
                                    description=reg.version_description.format(version=version.version))  # fmt: skip
    except BaseException:
        client.delete_model_version(reg.model_name, version.version)
        raise
    tqdm.write(f"registered models:/{reg.model_name}/{version.version} as models:/{reg.model_name}@{reg.alias}")
    return version.version


@contextlib.contextmanager
def _mlflow_events_silenced():
    """MLflow prints two lines of its own per registration straight to stderr, through the study's progress bar;
    register_backbone writes one line with the URIs instead, through tqdm."""
    from mlflow.utils import logging_utils

    previous = logging_utils.MLFLOW_LOGGING_STREAM.enabled
    logging_utils.disable_logging()
    try:
        yield
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM.enabled = previous


def run_tags(run_id: str) -> dict[str, str]:
    configure()
    try:
        return MlflowClient().get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException:
        raise CytoError(f"no MLflow run with id {run_id!r} in {mlflow.get_tracking_uri()}") from None


def run_params(run_id: str) -> dict[str, str]:
    configure()
    return MlflowClient().get_run(run_id).data.params


def find_run(stage: str, **tags) -> str | None:
    """The newest FINISHED run of `stage` whose tags equal `tags`, or None."""
    configure()
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=_filter(stage, "FINISHED", {}, tags),
                              order_by=["start_time DESC"], max_results=1, output_format="list")  # fmt: skip
    return runs[0].info.run_id if runs else None


def find_runs(stage: str | None = None, status: str | None = None, params: dict | None = None,
              experiment_id: str | None = None, **tags) -> pd.DataFrame:  # fmt: skip
    """Every run (of every experiment, or of `experiment_id`) of `stage` with `status` whose params and tags equal
    the given values, one row each (columns `params.*`, `tags.*`, `metrics.*`, `run_id`, `status`, `start_time`
    ...): what the study and the analysis read back."""
    configure()
    query = _filter(stage, status, params or {}, tags)
    if experiment_id is not None:
        return mlflow.search_runs(experiment_ids=[experiment_id], filter_string=query)
    return mlflow.search_runs(search_all_experiments=True, filter_string=query)


def tag(runs: pd.DataFrame | pd.Series, key: str):
    """A tag of what find_runs returned: a column of a table (None where a run lacks it), or the value of one row
    (None when it lacks it). With param() and metric(), the one place that knows how MLflow names its columns."""
    return _field(runs, "tags", key)


def param(runs: pd.DataFrame | pd.Series, key: str):
    return _field(runs, "params", key)


def metric(runs: pd.DataFrame | pd.Series, key: str):
    return _field(runs, "metrics", key)


def _field(runs: pd.DataFrame | pd.Series, kind: str, key: str):
    name = f"{kind}.{key}"
    if isinstance(runs, pd.Series):
        value = runs.get(name)
        return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value
    return runs[name] if name in runs else pd.Series(None, index=runs.index, dtype=object)


def _filter(stage: str | None, status: str | None, params: dict, tags: dict) -> str:
    tags = {"stage": stage, **tags} if stage else tags
    clauses = [f"tags.{key} = {_quoted(value)}" for key, value in tags.items()]
    clauses += [f"params.{key} = {_quoted(value)}" for key, value in params.items()]
    clauses += [f"attributes.status = '{status}'"] if status else []
    return " and ".join(clauses)


def _quoted(value) -> str:
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise CytoError(f"{text!r} holds both kinds of quote and cannot be searched for")


def create_run(experiment_id: str, run_name: str, tags: dict, parent_run_id: str | None = None) -> str:
    """A RUNNING run made without activating it (a study worker claiming a cell); returns its id."""
    configure()
    tags = _strings(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id


def set_run_tag(run_id: str, key: str, value) -> None:
    MlflowClient().set_tag(run_id, key, str(value))


def end_run(run_id: str, status: str) -> None:
    MlflowClient().set_terminated(run_id, status=status)


def fail_if_running(run_id: str) -> None:
    """Mark `run_id` FAILED unless it has ended: a run created for work that never opened it is not left RUNNING."""
    if MlflowClient().get_run(run_id).info.status == "RUNNING":
        end_run(run_id, "FAILED")


def delete_run(run_id: str) -> None:
    """Soft-delete (MLflow's lifecycle stage): searches no longer see it, `mlflow gc` removes it for good."""
    MlflowClient().delete_run(run_id)


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
    return (f"browse the runs: `mlflow ui --backend-store-uri {uri}`, then open "
            f"http://127.0.0.1:5000/{runs_page(experiment_id)}")  # fmt: skip


def active_run_info():
    """(run id, experiment id) of the active run, or None."""
    run = mlflow.active_run()
    return (run.info.run_id, run.info.experiment_id) if run else None


# --- downstream ---


def model_version(model_uri: str):
    """The registry version `models:/<name>/<version>` or `models:/<name>@<alias>` names; a one-line error if none."""
    configure()
    ref = model_uri.strip().removeprefix("models:/")
    name, by_alias, alias = ref.partition("@")
    if not by_alias:
        name, _, number = ref.rpartition("/")
    if not model_uri.strip().startswith("models:/") or not name or not (alias if by_alias else number.isdigit()):
        raise CytoError(f"{model_uri!r} is not a registered model: write models:/<name>/<version> or "
                        "models:/<name>@<alias>")  # fmt: skip
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise CytoError(f"no registered model named {name!r} in {mlflow.get_tracking_uri()}") from None
    try:
        return client.get_model_version_by_alias(name, alias) if by_alias else client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException:
        missing = f"alias {alias!r}" if by_alias else f"version {number}"
        raise CytoError(f"registered model {name!r} has no {missing}") from None


def load_registered_model(name: str, version: str) -> torch.nn.Module:
    """A registered PyTorch model by its fixed version (an alias could move to another version mid-study)."""
    configure()
    return mlflow.pytorch.load_model(f"models:/{name}/{version}")
