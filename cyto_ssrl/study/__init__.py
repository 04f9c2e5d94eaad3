"""The study: the grid of a preset as cells, each one MLflow run, so a study resumes, grows and runs on an engine.

config.py   the settings (a preset or JSON), checked before any run     plan.py     the pure grid of cells
ledger.py   what the tracking store says is done, current or stale      cells.py    stage -> what its cells do
runner.py   the driver: submits each cell when its needs are done       job.py      what runs for one cell, anywhere
executors/  where cells run: local, slurm (submitit), ray               launch.py   one study run: run_study
"""
