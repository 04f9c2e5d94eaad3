"""A benchmark's own working folder with its own SQLite tracking store, removed afterwards unless kept."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def scratch_store(keep: str | None, prefix: str):
    """Work in `keep` (kept) or a new folder under the working directory (removed); yields its absolute path."""
    folder = Path(keep or tempfile.mkdtemp(dir=".", prefix=prefix)).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    try:
        with contextlib.chdir(folder):
            yield folder
    finally:
        if not keep:
            shutil.rmtree(folder)
