"""The fake studies' store, built once per session, and a copy of it in every test's private store."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import make_study


@pytest.fixture(scope="session")
def study_db(tmp_path_factory) -> Path:
    """The fake studies' store (about a hundred runs), built once and copied by every test.

    Built in memory (/dev/shm) where there is one: SQLite syncs each of its hundreds of commits to disk otherwise.
    """
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{scratch / 'mlruns.db'}")
        make_study(client, client.create_experiment("fake-study"))
        return Path(shutil.copy(scratch / "mlruns.db", tmp_path_factory.mktemp("study")))
    finally:
        shutil.rmtree(scratch)


@pytest.fixture
def study(store, study_db) -> str:
    shutil.copy(study_db, store.removeprefix("sqlite:///"))
    return store
