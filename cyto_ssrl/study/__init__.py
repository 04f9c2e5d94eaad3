"""The study: the grid of a preset as cells, each one MLflow run, so a study resumes, grows and runs in parallel.

config.py   the settings (a preset or JSON), checked before any run     plan.py    the pure grid of cells
ledger.py   what the tracking store says is done, current or stale      cells.py   stage -> what its cells do
claims.py   how parallel workers share the grid                         runner.py  the loop that takes cells
launch.py   one study run: run_study
"""
