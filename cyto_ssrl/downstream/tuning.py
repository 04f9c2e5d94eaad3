"""Optuna searches of a budget's base lr, as stored: their names, their storage and their best blr.

The searches live in an Optuna RDB storage (default: `optuna.db` beside a SQLite tracking store; never the MLflow
database itself, whose alembic table Optuna's would clash with). `stages.tune` runs them.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from sqlalchemy.engine import make_url

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError
from cyto_ssrl.names import budget_label


def study_name(version, mode: str, budget: float) -> str:
    """From the fixed version, not the uri: an alias may move, and `@r1` and `/3` may name the same weights."""
    return f"models:/{version.name}/{version.version}|{mode}|budget={budget_label(budget)}"


def default_storage() -> str:
    """`optuna.db` in the folder of a SQLite tracking store (the working directory for a tracking server)."""
    uri = tracking.configure()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path.cwd()
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def tuned_blr(version, mode: str, budget: float, storage: str | None = None) -> float:
    """The best blr of the finished study for this model version, mode and budget."""
    storage = storage or default_storage()
    name = study_name(version, mode, budget)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise CytoError(f"no tuning study {name!r} in {shown_storage(storage)}; run tune for it first") from None
    try:
        return float(study.best_params["blr"])
    except ValueError:
        raise CytoError(f"tuning study {name!r} has no completed trial") from None


def shown_storage(storage: str) -> str:
    return make_url(storage).render_as_string(hide_password=True)
