"""The tracking server's users (`entrypoints.server --auth`): MLflow's basic-auth app and its admin."""

from __future__ import annotations

import warnings

from cyto_ssrl.errors import CytoError


def create_auth_admin() -> None:
    """Create the admin of the users database MLFLOW_AUTH_CONFIG_PATH names, with MLFLOW_AUTH_ADMIN_PASSWORD, unless
    it exists: done before `mlflow server` starts, so that a missing or weak password is one line, not its
    traceback."""
    try:
        with warnings.catch_warnings():  # a deprecation inside MLflow's server, nothing the user can act on
            warnings.simplefilter("ignore")
            from mlflow.server.auth import bootstrap_admin_user
    except ImportError:
        raise CytoError('--auth needs Flask-WTF: pip install -c constraints.txt -e ".[auth]"') from None
    from mlflow.exceptions import MlflowException

    try:
        bootstrap_admin_user()
    except MlflowException as exc:
        raise CytoError(exc.message) from None
