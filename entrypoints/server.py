"""A tracking server for parallel study workers: MLflow's server with a SQL store and a served artifact root.

    python -m entrypoints.server                                        # SQLite file + ./mlartifacts, port 5000
    python -m entrypoints.server --backend-store-uri postgresql://user:pw@db/mlflow --artifacts /shared/mlartifacts

Then every worker sets MLFLOW_TRACKING_URI=http://HOST:5000. Artifacts go through the server, so workers need no
access to its disk; tiles, pools and checkpoints are files in the study's output folder, which workers on other
machines must see at the same path (a shared filesystem).
"""

import argparse
import os
import sys


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow-server.db", help="SQLite or PostgreSQL URL")
    parser.add_argument("--artifacts", default="mlartifacts", help="artifact root the server writes")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve workers on other machines")
    parser.add_argument("--port", default="5000")
    args = parser.parse_args()
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
    print(f"tracking server on http://{args.host}:{args.port}; workers set MLFLOW_TRACKING_URI to it", flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    run()
