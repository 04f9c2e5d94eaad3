"""The analysis reads a study's downstream and representation runs from MLflow: one tidy row per finished run, and a
one-line error for runs it cannot read."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from analysis.query import downstream_results, representation_results
from cyto_ssrl.errors import CytoError

from .helpers import BUDGETS, log_run, metric_value


def test_results_are_one_tidy_row_per_finished_budget_run_of_the_study(study):
    results = downstream_results("s1")
    assert len(results) == 2 * 2 * 2 * 3 * 3 + 2 * 2 * 3  # pre-trained runs + the external baseline's
    assert list(results.columns[:12]) == [
        "method",
        "backbone",
        "ratio",
        "ratio_r",
        "mode",
        "budget",
        "resample",
        "seed",
        "pretrain_seed",
        "model_version",
        "blr",
        "run_id",
    ]
    assert set(results["ratio_r"]) == {0, 1, 10, 100}
    assert set(results["budget"]) == set(BUDGETS) and results["resample"].dtype.kind == "i"
    first = results.iloc[0]
    assert (first["method"], first["mode"], first["budget"], first["ratio"]) == ("mae", "linear", 100.0, "1:1")
    assert first["acc"] == pytest.approx(metric_value("acc", "mae", "linear", 100.0, 1, 0))


def test_a_representation_run_without_its_model_tags_is_a_one_line_error(study):
    client = MlflowClient()
    experiment = client.search_experiments()[0].experiment_id
    log_run(
        client,
        experiment,
        {"study": "s3", "method": "mae"},
        {"mode": "representation"},
        {"representation/kmeans_ami": 0.3},
    )
    with pytest.raises(CytoError, match="1 downstream runs of study s3 have no tag backbone"):
        representation_results("s3")
