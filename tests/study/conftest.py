"""The study tests' cohort (the small synthetic one tiled once per session), a real tracking server, and a real
SLURM cluster where this machine has one or can start one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ..conftest import tracking_to
from ..helpers import ROOT, free_port, start_server


@pytest.fixture
def manifest(small_cohort) -> Path:
    return small_cohort


@pytest.fixture
def server(request, tmp_path):
    """A real `mlflow server` on 127.0.0.1, started by the project's command, with a served artifact root. Its
    backend store is a SQLite file, or a fresh database of a real PostgreSQL when the test is parametrized with
    `server="postgres"` (indirect)."""
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    if getattr(request, "param", "sqlite") == "postgres":
        backend = request.getfixturevalue("postgres_database")
    with running_server(tmp_path, backend) as uri:
        yield uri


@contextlib.contextmanager
def running_server(folder: Path, backend: str, *options: str, env: dict | None = None):
    """`python -m entrypoints.server` in `folder` (its log `server.log`, its artifacts `artifacts/`) with `options`
    and `env` added; yields its address once it answers."""
    port = free_port()
    process = start_server(port, backend, folder, *options, env=env)
    if process is None:
        pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its web workers
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM cluster answering `sinfo`: this machine's, or the one-node cluster .ci/slurm-up starts (as root)."""
    up = shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True, timeout=60).returncode == 0
    if not up:
        assert os.geteuid() == 0, "no SLURM cluster answers here: run .ci/slurm-up as root first"
        subprocess.run(["bash", str(ROOT / ".ci" / "slurm-up")], check=True, timeout=600)


@pytest.fixture
def served(server, tmp_path, monkeypatch) -> str:
    """Everything the test calls uses the tracking server, as a study on an engine must."""
    yield from tracking_to(server, tmp_path, monkeypatch)
