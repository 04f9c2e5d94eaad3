"""The MLflow UI in a real browser: a tiny study's runs in the runs table, and a downstream run's inputs on its page.

Debian's Chromium (.ci/chromium-up installs it) driven by Playwright (the `test` extra); both are needed, so a
missing one fails the test rather than skipping it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.helpers import ROOT, free_port, micro

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # require_browser() fails the test with the fix
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
# Headless as root on a machine with no GPU and no internet; Playwright gives each launch a fresh profile.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000  # the UI is a heavy React app and CI machines are small: wait long, never sleep


def require_browser() -> None:
    """Fail (not skip) when Playwright or Chromium is missing: CI installs both."""
    if sync_playwright is None:
        pytest.fail("playwright is not installed: run `bash install.sh` (it installs the `test` extra)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash .ci/chromium-up` (apt-get install chromium)")


@contextlib.contextmanager
def chromium_page(screenshots: Path):
    """A Chromium page with generous timeouts; it leaves `last.png` in `screenshots`, whatever happened."""
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            page.screenshot(path=screenshots / "last.png")
            browser.close()


@contextlib.contextmanager
def mlflow_ui(store: str, log: Path):
    """Starts `mlflow ui` on a free port of 127.0.0.1, serving `store`; yields a function that waits until the
    server answers and returns its base URL (so the caller can work while it starts)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "ui",
                "--backend-store-uri",
                store,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def up() -> str:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "health", timeout=5).read()
                return url
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow ui did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)

    try:
        yield up
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and any workers
        try:
            process.wait(timeout=5)  # it would wait for the browser's open connections
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def run_study(folder: Path, manifest: Path) -> str:
    """`python -m entrypoints.study` on a small grid (one ratio, MAE, two resamples, no external baseline); what it
    printed."""
    preset = folder / "ui.json"
    cfg = micro(manifest, ratios=("1:2",), external="")
    preset.write_text(json.dumps({k: v for k, v in vars(cfg).items() if k != "output"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN") and k != "MLFLOW_EXPERIMENT_ID"}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.study", "--preset", str(preset), "--study", "ui"],
        cwd=folder,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_ui_shows_the_study_runs_and_a_downstream_runs_inputs(tmp_path, store, small_cohort):
    require_browser()
    mlflow.search_experiments()  # creates the store's tables, before the server and the study open it together
    with mlflow_ui(store, tmp_path / "ui.log") as ui:
        printed = run_study(tmp_path, small_cohort)
        # The study ends with the URL that opens its runs table (not MLflow 3's GenAI overview).
        links = re.findall(r"#/experiments/\d+/runs\?workflowType=machine_learning", printed)
        assert links, f"the study printed no runs-table URL; its last lines:\n{printed[-1500:]}"
        with chromium_page(tmp_path) as page:
            page.goto(ui() + links[-1])
            check_the_runs_table(page, tmp_path)
            check_a_downstream_run_page(page, tmp_path)


def study_runs(page) -> pd.DataFrame:
    """The runs of study `ui` in the experiment the page shows, from the store."""
    experiment_id = re.search(r"#/experiments/(\d+)/", page.url)[1]
    return mlflow.search_runs([experiment_id], filter_string="tags.study = 'ui'")


def check_the_runs_table(page, screenshots: Path) -> None:
    """Every run of the study is in the table by name; the cells are nested under the study's run, collapsed."""
    runs = study_runs(page)
    parent = runs.loc[runs["tags.stage"] == "study", "tags.mlflow.runName"].item()
    assert (runs["tags.stage"] == "downstream").sum() == 2, runs[["tags.mlflow.runName", "tags.stage"]]
    in_table = page.get_by_role("gridcell")  # not the experiment's description, which links runs too
    # The study's row has one button: the one that expands its nested runs.
    study_row = page.get_by_role("row").filter(has=in_table.get_by_role("link", name=parent, exact=True))
    study_row.get_by_role("button").click()
    for name in runs["tags.mlflow.runName"]:  # e.g. mae-vit_tiny@1:2/linear-b50-r0
        expect(in_table.get_by_role("link", name=name, exact=True)).to_be_visible()
    page.screenshot(path=screenshots / "1-runs.png")


def check_a_downstream_run_page(page, screenshots: Path) -> None:
    """A downstream run's page shows the model it trained on and the datasets it used, as the store has them."""
    runs = study_runs(page)
    run = runs[(runs["tags.stage"] == "downstream") & runs["tags.mlflow.runName"].str.startswith("mae-")].iloc[0]
    name = run["tags.mlflow.runName"]
    inputs = mlflow.get_run(run.run_id).inputs
    datasets = [d.dataset.name for d in inputs.dataset_inputs]
    models = {m.model_id: mlflow.get_logged_model(m.model_id).name for m in inputs.model_inputs}
    assert datasets and models, f"run {name} logs no dataset input or no model input"

    page.get_by_role("gridcell").get_by_role("link", name=name, exact=True).click()
    expect(page).to_have_url(re.compile(re.escape(f"#/experiments/{run.experiment_id}/runs/{run.run_id}") + "$"))
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    page.screenshot(path=screenshots / "2-run.png")
    # Its "Logged models" table lists each model input with type "Input", linked to the logged model's page.
    for model_id, model in models.items():
        row = (
            page.get_by_role("row")
            .filter(has=page.get_by_role("gridcell", name="Input", exact=True))
            .filter(has=page.get_by_role("link", name=model, exact=True))
        )
        expect(row).to_be_visible()
        expect(row.get_by_role("link", name=model, exact=True)).to_have_attribute("href", re.compile(model_id))
        row.scroll_into_view_if_needed()
    page.screenshot(path=screenshots / "3-run-models.png")
    # Its "Datasets" section shows one dataset button, "name (digest)", and "+N"; a click opens a dialog with all.
    # (The models table's dataset buttons read "name (#digest)".)
    shown = re.compile(rf"^({'|'.join(map(re.escape, datasets))}) \([0-9a-f]+\)$")
    page.get_by_role("button", name=shown).first.click()
    dialog = page.get_by_role("dialog", name=re.compile("^Data details for"))
    expect(dialog.get_by_text(re.compile(rf"^{len(datasets)} datasets? used"))).to_be_visible()
    for dataset in datasets:  # e.g. train-b50-r0, val-b50-r0, evaluation
        expect(dialog.get_by_role("button", name=re.compile(rf"^{re.escape(dataset)} \("))).to_be_visible()
    page.screenshot(path=screenshots / "4-run-datasets.png")
