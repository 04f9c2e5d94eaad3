"""A shared tracking server with `--auth` on a real PostgreSQL store: it lets in no client without an account, a
study runs with one given through MLflow's variables, and no password reaches the store, the files or the logs."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import mlflow
import psycopg
import pytest

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.presets import StudyConfig
from entrypoints import server as server_entry_point

from ..helpers import ROOT, local_env_path, micro, mlflow_run
from .conftest import running_server

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD")


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any credential or run of the test's own, with this checkout's entry points first on
    the path, plus `values`."""
    drop = (*CREDENTIALS, "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PATH": local_env_path(), "PYTHONPATH": path, **values}


def basic(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def call(uri: str, path: str, body: dict | None = None, account: tuple[str, str] | None = None) -> int:
    """The HTTP status of one REST call to the server."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(uri + path, data=data, headers={"Content-Type": "application/json"})
    if account:
        request.add_header("Authorization", f"Basic {basic(*account)}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def database_text(database: str) -> str:
    """Every row of every table of a PostgreSQL database, as text."""
    with psycopg.connect(database) as connection:
        tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        rows = [connection.execute(f'SELECT t::text FROM "{name}" t').fetchall() for (name,) in tables]
    return "\n".join(row[0] for table in rows for row in table)


def test_a_password_in_a_uri_is_refused_in_one_line(store, monkeypatch):
    """Written into a URI, a password would travel into params, the study's files, messages and logs."""
    monkeypatch.setattr(sys, "argv", ["server", "--backend-store-uri", "postgresql://lab:secret@db/mlflow"])
    with pytest.raises(CytoError, match="--backend-store-uri holds a password: .* set PGPASSWORD"):
        server_entry_point.run()
    with pytest.raises(CytoError, match="tune_storage holds a password"):
        run_study(StudyConfig(tune_storage="postgresql://lab:secret@db/optuna"), "x")
    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before any run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:secret@mlflow.lab.example")
    with pytest.raises(CytoError, match="MLFLOW_TRACKING_URI holds a password: .* MLFLOW_TRACKING_PASSWORD"):
        tracking.configure()


@pytest.mark.slow
def test_a_server_with_auth_admits_only_its_users_and_keeps_no_password(
    tmp_path, manifest, postgres_database, monkeypatch
):
    admin = ("admin", f"Adm1n-{uuid.uuid4().hex}")
    worker = ("worker", f"W0rker-{uuid.uuid4().hex}")
    secrets = [admin[1], worker[1], basic(*admin), basic(*worker)]

    # No admin password: refused in one line, before anything listens.
    refused = tmp_path / "refused"
    refused.mkdir()
    command = [sys.executable, "-m", "entrypoints.server", "--auth", "--port", "1"]
    done = subprocess.run(command, cwd=refused, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in done.stderr

    server_env = {"MLFLOW_AUTH_ADMIN_PASSWORD": admin[1]}
    auth_db = f"sqlite:///{tmp_path / 'users.db'}"
    with running_server(tmp_path, postgres_database, "--auth", "--auth-db", auth_db, env=server_env) as uri:
        # No account, or a wrong password: the REST API answers 401, a project command one line.
        assert call(uri, "/api/2.0/mlflow/experiments/search?max_results=1") == 401
        assert call(uri, "/api/2.0/mlflow/experiments/search?max_results=1", account=(admin[0], "nope")) == 401
        analyze = [sys.executable, "-m", "entrypoints.analyze", "--study", "auth"]
        env = clean_env(MLFLOW_TRACKING_URI=uri)
        done = subprocess.run(analyze, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
        assert "refused no credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME" in done.stderr
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", worker[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", worker[1])
        with pytest.raises(CytoError, match="refused user 'worker' with that password"):
            tracking.configure()  # no such account yet

        # The admin makes the worker's account; the study runs with it, given only through MLflow's variables.
        assert call(uri, "/api/2.0/mlflow/users/create", dict(zip(("username", "password"), worker)), admin) == 200
        work = tmp_path / "work"
        work.mkdir()
        preset = work / "auth.json"
        cfg = micro(manifest, ratios=("1:1",), external="", resamples=1, output=str(work / "outputs"))
        preset.write_text(json.dumps(vars(cfg)))
        env = clean_env(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=worker[0], MLFLOW_TRACKING_PASSWORD=worker[1])
        command = mlflow_run("study", f"preset={preset}", "study=auth", experiment="auth")
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert re.search(r"study auth: \d+ cells done", done.stdout), done.stdout[-2000:]

    # The whole store: the tracking database, the users database, every artifact, the study's outputs, the
    # server's config and log, and what the study printed.
    store = database_text(postgres_database)
    assert "auth" in store and "eval/acc" in store  # the scan reads what the study wrote
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(p.name == "users.db" for p in files) and any("artifacts" in p.parts for p in files)
    texts = [store, done.stdout, done.stderr, *(p.read_bytes().decode("latin-1") for p in files)]
    assert worker[0].encode() in (tmp_path / "users.db").read_bytes()  # the users database holds its account
    for secret in secrets:
        assert not [text[:80] for text in texts if secret in text], f"a credential was stored: {secret[:4]}..."
    assert (tmp_path / "mlflow-auth.ini").stat().st_mode & 0o777 == 0o600
