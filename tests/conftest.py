"""Shared fixtures: a fresh SQLite MLflow store per test, the real public data beside the checkout, a synthetic
cohort tiled once, and a backbone pre-trained once on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest

from .helpers import ROOT

SHARED_DATA = Path(os.environ.get("CYTO_SSRL_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the real test data is expected at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


def tracking_to(uri: str, folder: Path, monkeypatch):
    """Everything the test calls works in `folder` and tracks to `uri`; runs left open are ended afterwards."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    clear_run_context(monkeypatch)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture(scope="session")
def blank_store(tmp_path_factory) -> Path:
    """An empty SQLite tracking store made once: MLflow takes seconds to create one, and a copy opens at once."""
    folder = tmp_path_factory.mktemp("blank_store")
    with private_store(folder):
        mlflow.search_runs(search_all_experiments=True)
    return folder / "mlruns.db"


@pytest.fixture
def store(tmp_path, monkeypatch, blank_store) -> str:
    """A private tracking store (SQLite file + artifacts) in tmp_path, used by everything the test calls."""
    shutil.copy(blank_store, tmp_path / "mlruns.db")
    yield from tracking_to(f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path, monkeypatch)


@contextlib.contextmanager
def private_store(folder: Path):
    """Work in `folder` with its own SQLite store, whatever the environment points at (for module-scoped fixtures)."""
    outer_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlruns.db'}")
        clear_run_context(patch)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        try:
            yield
        finally:
            mlflow.set_tracking_uri(outer_uri)  # the test that first asked for the fixture goes on in its store


def clear_run_context(patch: pytest.MonkeyPatch) -> None:
    """Unset MLflow's run and experiment variables, and undo afterwards whatever MLflow sets in them meanwhile
    (`set_experiment` sets MLFLOW_EXPERIMENT_ID): a monkeypatch restores only a variable it has recorded, and
    `delenv` of an absent one records nothing."""
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        patch.setenv(name, "")
        patch.delenv(name)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """The manifest of a small synthetic cohort tiled once by the real stage 1 (6 slides, 64 px tiles)."""
    from cyto_ssrl.data.config import SyntheticConfig
    from cyto_ssrl.stages.tiles import run_tiles

    folder = tmp_path_factory.mktemp("cohort")
    with private_store(folder):
        # deposit 900 um: at 600 the ssrl partition holds too few positives for a 1:1 pool of 64. The collection's
        # own prevalence (balance=()): tests/stages/test_downstream.py checks that 100 % of an unbalanced partition
        # is refused.
        synthetic = SyntheticConfig(n_slides=6, deposit_um=900, prevalence=0.3)
        return run_tiles("synthetic", None, str(folder / "tiles"), "tiny", synthetic=synthetic, balance=())[1]


@pytest.fixture(scope="session")
def synthetic_default(tmp_path_factory) -> tuple[str, str, Path]:
    """`mlflow run . -e tiles` with no parameters (the tiny preset's synthetic cohort), tiled once by the tracked
    stage 1 in a private store: (its tracking URI, the run id, the manifest path)."""
    from cyto_ssrl.stages.tiles import run_tiles

    folder = tmp_path_factory.mktemp("synthetic_default")
    with private_store(folder):
        run_id, manifest = run_tiles("synthetic", None, str(folder / "tiles"), "tiny")
    return f"sqlite:///{folder / 'mlruns.db'}", run_id, manifest


@pytest.fixture(scope="session")
def registered(tmp_path_factory, small_cohort):
    """One tiny MAE backbone pre-trained by the real stages on a synthetic cohort, in a store every test copies."""
    from cyto_ssrl.stages.pretrain import run_pretrain

    folder = tmp_path_factory.mktemp("backbone")
    with private_store(folder):
        _, uri = run_pretrain(
            "mae", "1:1", manifest=str(small_cohort), pool_size=64, epochs=1, batch_size=16, num_workers=0
        )
    return folder / "mlruns.db", uri, small_cohort


@pytest.fixture
def model(store, registered) -> str:
    """The test's private store, holding a copy of the registered backbone (artifacts stay in its session folder)."""
    db, uri, _ = registered
    shutil.copy(db, store.removeprefix("sqlite:///"))
    return uri


@pytest.fixture(scope="session")
def postgres() -> str:
    """A real PostgreSQL on 127.0.0.1 (Debian's, started by .ci/postgres-up as root); the URI of its server."""
    ready = shutil.which("pg_isready") and subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0
    assert ready or os.geteuid() == 0, "no PostgreSQL answers on 127.0.0.1: run .ci/postgres-up as root first"
    done = subprocess.run(["bash", str(ROOT / ".ci" / "postgres-up")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1].rpartition("/")[0]


@pytest.fixture
def postgres_database(postgres) -> str:
    """A new, empty database of its own for one test."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{postgres}/{name}"
