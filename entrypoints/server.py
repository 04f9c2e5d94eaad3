"""A tracking server for parallel study workers: MLflow's server with a SQL store and a served artifact root.

    python -m entrypoints.server                                        # SQLite file + ./mlartifacts, port 5000
    python -m entrypoints.server --backend-store-uri postgresql://user@db/mlflow --artifacts /shared/mlartifacts
    MLFLOW_AUTH_ADMIN_PASSWORD=... python -m entrypoints.server --auth  # only users of its users database get in

Then every worker sets MLFLOW_TRACKING_URI=http://HOST:5000 (and, with --auth, MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD). Artifacts go through the server, so workers need no access to its disk; tiles, pools and
checkpoints are files in the study's output folder, which workers on other machines must see at the same path (a
shared filesystem). Passwords never go on the command line: a database's comes from its own variable (PGPASSWORD
for PostgreSQL), the admin's from MLFLOW_AUTH_ADMIN_PASSWORD, needed only at the first start.
"""

import argparse
import os
import secrets
import sys
from pathlib import Path

from cyto_ssrl.cli import Parser, main
from cyto_ssrl.tracking import create_auth_admin, refuse_password

AUTH_CONFIG = "mlflow-auth.ini"


def run() -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow-server.db", help="SQLite or PostgreSQL URL")
    parser.add_argument("--artifacts", default="mlartifacts", help="artifact root the server writes")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve workers on other machines")
    parser.add_argument("--port", default="5000")
    parser.add_argument("--auth", action="store_true", help="MLflow's basic-auth app: every request needs a user")
    parser.add_argument("--auth-db", default="sqlite:///mlflow-auth.db", help="the users database of --auth")
    parser.add_argument(
        "--default-permission",
        default="READ",
        choices=("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE"),
        help="what a user of --auth may do with others' experiments and models",
    )
    args = parser.parse_args()
    refuse_password(args.backend_store_uri, "--backend-store-uri")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        args.backend_store_uri,
        "--artifacts-destination",
        os.path.abspath(args.artifacts),
        "--serve-artifacts",
        "--host",
        args.host,
        "--port",
        args.port,
    ]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.auth:
        setup_auth(args.auth_db, args.default_permission)
        command += ["--app-name", "basic-auth"]
    print(f"tracking server on http://{args.host}:{args.port}; workers set MLFLOW_TRACKING_URI to it", flush=True)
    os.execv(sys.executable, command)


def setup_auth(database_uri: str, default_permission: str) -> None:
    """Write the auth app's settings (no secret in them) and create its admin now, so that a missing or weak admin
    password is one line here rather than a traceback of `mlflow server`."""
    refuse_password(database_uri, "--auth-db")
    config = Path(AUTH_CONFIG).resolve()
    config.touch()
    config.chmod(0o600)
    # A password check is a scrypt hash (about 0.3 s of a core) on every request: a checked account is trusted for a
    # minute, so a study's thousands of calls do not queue behind it. A changed password takes up to a minute.
    config.write_text(
        f"[mlflow]\ndefault_permission = {default_permission}\ndatabase_uri = {database_uri}\n"
        f"admin_username = {os.environ.get('MLFLOW_AUTH_ADMIN_USERNAME') or 'admin'}\nauth_cache_ttl_seconds = 60\n"
    )
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    # Only for the CSRF token of the sign-up form; every worker of this start inherits the same key.
    os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    create_auth_admin()


if __name__ == "__main__":
    main(run)
