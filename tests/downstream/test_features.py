"""The feature cache: a linear probe from cached features equals one from re-encoded tiles, and a stale cache is
recomputed."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from cyto_ssrl.downstream import setup as downstream_setup
from cyto_ssrl.downstream.features import cache_path
from cyto_ssrl.downstream.setup import prepare
from cyto_ssrl.stages.downstream import run_downstream

from ..helpers import EVAL_METRICS, children


def eval_metrics(parent_id: str) -> list[dict]:
    runs = children(parent_id, "linear")
    return runs[["params.budget", "params.resample"] + [f"metrics.{m}" for m in EVAL_METRICS]].to_dict("records")


def test_linear_probe_from_cache_equals_reencoding(model, monkeypatch):
    first = run_downstream(model, "linear", budgets=(10,), resamples=2)
    assert len(list(Path("outputs/features").glob("*.pt"))) == 2  # downstream and evaluation partitions

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache was not used")

    with monkeypatch.context() as patch:
        patch.setattr(downstream_setup, "encode", no_encoding)
        cached = run_downstream(model, "linear", budgets=(10,), resamples=2)
    shutil.rmtree("outputs/features")
    uncached = run_downstream(model, "linear", budgets=(10,), resamples=2, cache_features=False)
    assert not Path("outputs/features").exists()
    assert eval_metrics(first) == eval_metrics(cached) == eval_metrics(uncached)
    assert len(eval_metrics(first)) == 2


def test_a_stale_cache_is_recomputed(model):
    fresh = prepare(model).features("evaluation")
    path = cache_path("outputs/features", torch.load(next(Path("outputs/features").glob("*evaluation*")))["key"])
    stored = torch.load(path)
    # As if another registration had reused this name and version number for other weights.
    stale_key = {**stored["key"], "model_source": "models:/m-someothermodel"}
    torch.save({"key": stale_key, "features": torch.zeros_like(fresh)}, path)
    assert torch.equal(prepare(model).features("evaluation"), fresh)
    assert torch.load(path)["key"] == stored["key"]
