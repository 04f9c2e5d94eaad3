"""The tracking store: where it is, and runs found, read, created, ended and deleted by what they mean.

Default store: `sqlite:///mlruns.db` in the working directory with artifacts beside it; `MLFLOW_TRACKING_URI`
overrides it (an `mlflow server` for parallel work). `find_runs` takes what a run is (`stage=`, `status=`, tags and
params); `tag`, `param` and `metric` read its answer, so no filter string or column name is written elsewhere.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request

import mlflow
import pandas as pd
from mlflow import MlflowClient

from cyto_ssrl.errors import CytoError

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"


DEFAULT_EXPERIMENT = "cyto_ssrl"


def configure() -> str:
    """Point MLflow at the project's store and check it answers before any work starts."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Two INFO lines per run with system metrics would cut through the progress bar; its warnings still show.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    refuse_password(uri, "MLFLOW_TRACKING_URI")
    if uri.startswith("http"):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def store_uri() -> str:
    """The tracking store in use, for messages."""
    return mlflow.get_tracking_uri()


def refuse_password(uri: str, where: str) -> None:
    """A password written into a URI would travel on into params, the study's files, messages and logs: the project
    takes passwords only from the variables made for them."""
    if urllib.parse.urlsplit(uri).password is None:
        return
    variables = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if not uri.startswith("http"):
        variables = "PGPASSWORD (PostgreSQL's own variable) or ~/.pgpass"
    raise CytoError(f"{where} holds a password: leave it out of the URI and set {variables} instead")


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10, context=_tls()) as response:
            response.read()
    except OSError as exc:
        raise CytoError(
            f"tracking server {uri} is unreachable ({exc}); start it or unset MLFLOW_TRACKING_URI"
        ) from None
    _check_account(uri, os.environ.get("MLFLOW_TRACKING_USERNAME", ""), os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))


@functools.cache  # once per process and account (a failed check is not cached)
def _check_account(uri: str, username: str, password: str) -> None:
    """A server with auth answers 401 to every call of a client it does not know: one line here, before any work,
    rather than MLflow's traceback from the middle of it."""
    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    if username or password:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=_tls()) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            given = f"user {username!r} with that password" if username else "no credentials"
            raise CytoError(
                f"tracking server {uri} refused {given} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to an account of it"
            ) from None


def _tls() -> ssl.SSLContext:
    """What MLflow's client verifies a server with: a lab's CA (MLFLOW_TRACKING_SERVER_CERT_PATH), no check at all
    (MLFLOW_TRACKING_INSECURE_TLS=true), else the system's CAs."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


def lost_server(exc: BaseException) -> str | None:
    """What to say, in one line, when `exc` is the tracking server not answering: MLflow's client retries every
    request with backoff (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, about 4 minutes), so a restarted server costs
    nothing, and only one that stayed away longer ends up here. None for any other error."""
    import requests

    while exc is not None:
        if isinstance(exc, requests.exceptions.ConnectionError):
            return (
                f"tracking server {store_uri()} stopped answering and did not come back within MLflow's retries "
                "(MLFLOW_HTTP_REQUEST_MAX_RETRIES); the run could not be ended: start the server and run the same "
                "command again"
            )
        exc = exc.__cause__ or exc.__context__
    return None


def use_experiment() -> None:
    # `mlflow run` fixes the experiment through MLFLOW_EXPERIMENT_ID; setting another one would be refused.
    if "MLFLOW_EXPERIMENT_ID" not in os.environ:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))


def text_values(tags: dict) -> dict[str, str]:
    """Tag values as text: a file store takes numbers and paths, a REST store (`mlflow server`) only str."""
    return {key: str(value) for key, value in tags.items()}


def tracking_env() -> dict[str, str]:
    """Variables a child process (accelerate launch) needs to reach the same store, and nothing of `mlflow run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID",)}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    return env


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
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=_filter(stage, "FINISHED", {}, tags),
        order_by=["start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def find_runs(
    stage: str | None = None,
    status: str | None = None,
    params: dict | None = None,
    experiment_id: str | None = None,
    **tags,
) -> pd.DataFrame:
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


def tags_of(runs: pd.DataFrame) -> list[dict[str, str]]:
    """Each run's tags as a dict, in the table's order."""
    names = [name for name in runs.columns if name.startswith("tags.")]
    return [
        {name[5:]: value for name, value in zip(names, row) if isinstance(value, str)}
        for row in runs[names].itertuples(index=False)
    ]


def run_status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


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
    tags = text_values(tags)
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


def active_run_info():
    """(run id, experiment id) of the active run, or None."""
    run = mlflow.active_run()
    return (run.info.run_id, run.info.experiment_id) if run else None
