"""The downstream results of one study as one tidy table, read back from the tracking store.

One row per finished linear-probe or fine-tuning run (one budget draw of one backbone); metrics stay fractions
(0-1) as logged. The external baseline's rows have method and ratio 'external' and ratio_r 0.
"""

from __future__ import annotations

import pandas as pd

from cyto_ssrl import names, tracking
from cyto_ssrl.downstream.config import TRAINED_MODES  # representation runs have no budget, no eval/*
from cyto_ssrl.downstream.metrics import METRIC_NAMES
from cyto_ssrl.errors import CytoError

EXTERNAL = "external"
# Runs that agree on these were trained on the same labelled budget draw, so their metrics pair up.
PAIR_KEYS = ("seed", "pretrain_seed", "resample")
# What a run must carry to be grouped: the model version's tags (on representation runs too), and a budget draw's
# params.
MODEL_TAGS = (("tag", "method"), ("tag", "backbone"), ("tag", "ratio"), ("tag", "ratio_r"))
REQUIRED = (*MODEL_TAGS, ("param", "mode"), ("param", "budget"), ("param", "resample"))
FIELDS = {"tag": tracking.tag, "param": tracking.param, "metric": tracking.metric}
COLUMNS = (
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
    *METRIC_NAMES,
)


def downstream_results(study_id: str) -> pd.DataFrame:
    """Tidy table of the study's finished downstream runs with a budget; a one-line error when there are none."""
    if "'" in study_id:
        raise CytoError(f"study id {study_id!r} must not contain quotes")
    runs = tracking.find_runs("downstream", "FINISHED", study=study_id)
    # The parent run of each downstream call and the representation run carry no budget: they are not results.
    runs = runs[tracking.param(runs, "mode").isin(TRAINED_MODES) & tracking.param(runs, "budget").notna()]
    if runs.empty:
        raise CytoError(f"no finished downstream runs for study {study_id} in {tracking.store_uri()}")
    _check_complete(runs, study_id, REQUIRED)
    tag, param = tracking.tag, tracking.param
    results = pd.DataFrame(
        {
            **_model_columns(runs),
            "mode": param(runs, "mode"),
            "budget": param(runs, "budget").astype(float),
            "resample": param(runs, "resample").astype(int),
            # run_downstream's default seed is 0; pretrain_seed is an optional tag.
            "seed": param(runs, "seed").fillna("0").astype(int),
            "pretrain_seed": tag(runs, "pretrain_seed").fillna("").astype(str),
            "model_version": tag(runs, "model_version").fillna("").astype(str),
            "blr": param(runs, "blr").astype(float),  # the preset's, or the tuned one (study tune_trials)
            "run_id": runs["run_id"],
            **{name: tracking.metric(runs, f"{names.EVAL}{name}").astype(float) for name in METRIC_NAMES},
            "start_time": runs["start_time"],
        }
    )
    # A cell evaluated twice (a rerun of the same model version on the same draw) counts once: the newest run.
    repeated = [c for c in COLUMNS if c not in ("blr", "run_id", *METRIC_NAMES)]
    results = results.sort_values("start_time").drop_duplicates(repeated, keep="last")
    return sort_rows(results.sort_values(["ratio_r", *PAIR_KEYS]))[list(COLUMNS)]


def _model_columns(runs: pd.DataFrame) -> dict[str, pd.Series]:
    """How the evaluated backbone was made, from the model version's tags every downstream run carries."""
    return {
        "method": tracking.tag(runs, "method"),
        "backbone": tracking.tag(runs, "backbone"),
        "ratio": tracking.tag(runs, "ratio"),
        "ratio_r": tracking.tag(runs, "ratio_r").astype(int),
    }


def _check_complete(runs: pd.DataFrame, study_id: str, required) -> None:
    for kind, key in required:
        missing = runs[FIELDS[kind](runs, key).isna()]
        if not missing.empty:
            raise CytoError(
                f"{len(missing)} downstream runs of study {study_id} have no {kind} {key} (e.g. run "
                f"{missing['run_id'].iloc[0]}); the analysis needs it to group results"
            )


def pretrained(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of backbones pre-trained on a pool (everything but the external baseline)."""
    return results[results["method"] != EXTERNAL]


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's row order: method, backbone, linear before fine-tuning, largest budget first."""
    order = [c for c in ("method", "backbone", "mode", "budget") if c in df]
    return df.sort_values(order, key=_sort_key, kind="stable").reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "method":  # the external baseline after the pre-trained methods
        return column.eq(EXTERNAL).astype(int).astype(str) + column
    if column.name == "mode":
        return column.map(TRAINED_MODES.index)
    return -column if column.name == "budget" else column


def panels(results: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(method, backbone, mode) of every pre-trained backbone's evaluation: one figure panel or table block each."""
    keys = sort_rows(pretrained(results)[["method", "backbone", "mode"]].drop_duplicates())
    return list(keys.itertuples(index=False, name=None))


def panel_rows(results: pd.DataFrame, method: str, backbone: str, mode: str) -> pd.DataFrame:
    """The rows of one panel; with method EXTERNAL, the baseline that panel's backbone is compared with."""
    return results[(results["method"] == method) & (results["backbone"] == backbone) & (results["mode"] == mode)]


# The representation run's scores of a frozen backbone (k-NN on the downstream partition, k-means and SVM on
# evaluation).
REPRESENTATION_METRICS = ("knn_best_weighted_f1", "kmeans_ami", "kmeans_ari", "kmeans_purity", "svm_acc", "svm_auc")


def representation_results(study_id: str) -> pd.DataFrame:
    """One row per finished representation run: method, backbone, ratio, ratio_r and REPRESENTATION_METRICS (empty
    if none)."""
    runs = tracking.find_runs("downstream", "FINISHED", params={"mode": "representation"}, study=study_id)
    if runs.empty:
        return pd.DataFrame(columns=["method", "backbone", "ratio", "ratio_r", *REPRESENTATION_METRICS])
    _check_complete(runs, study_id, MODEL_TAGS)
    scores = {
        name: tracking.metric(runs, f"{names.REPRESENTATION}{name}").astype(float) for name in REPRESENTATION_METRICS
    }
    return sort_rows(pd.DataFrame({**_model_columns(runs), **scores}).sort_values("ratio_r"))
