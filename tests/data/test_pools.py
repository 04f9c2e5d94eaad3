"""Pools at every paper ratio from the ssrl partition, and requests that cannot be met."""

from __future__ import annotations

import pandas as pd
import pytest

from cyto_ssrl.data.pools import make_pool, parse_ratio, pool_counts, pool_digest
from cyto_ssrl.errors import CytoError
from cyto_ssrl.study.presets import PAPER_RATIOS


def fake_manifest(n_pos: int, n_neg: int) -> pd.DataFrame:
    ids = [f"t{i:06d}" for i in range(n_pos + n_neg)]
    return pd.DataFrame(
        {
            "tile_id": ids,
            "slide_id": "s",
            "partition": "ssrl",
            "path": ids,
            "label": ["positive"] * n_pos + ["negative"] * n_neg,
        }
    )


@pytest.mark.parametrize("r", PAPER_RATIOS)
def test_pool_counts_at_every_paper_ratio(r):
    manifest = fake_manifest(6_000, 12_000)
    pool = make_pool(manifest, r, 8_000, seed=1)
    expected = max(1, round(8_000 / (r + 1)))
    assert (pool["label"] == "positive").sum() == expected
    assert len(pool) == 8_000 and pool["tile_id"].is_unique
    assert pool_digest(pool) == pool_digest(make_pool(manifest, r, 8_000, seed=1))
    assert pool_digest(pool) != pool_digest(make_pool(manifest, r, 8_000, seed=2))


def test_pool_requests_that_cannot_be_met():
    manifest = fake_manifest(30, 1_000)
    with pytest.raises(CytoError, match="needs 200 positive and 200 negative ssrl tiles; the manifest has 30 and 1000"):
        make_pool(manifest, 1, 400, seed=0)
    smaller = make_pool(manifest, 1, 400, seed=0, allow_smaller=True)
    assert len(smaller) == 60 and (smaller["label"] == "positive").sum() == 30
    with pytest.raises(CytoError, match="no tiles in the 'ssrl' partition"):
        make_pool(manifest.assign(partition="evaluation"), 1, 10, seed=0)
    for bad in ("1/100", "0:5", "1:0", "2:5", "abc"):
        with pytest.raises(CytoError, match="ratio"):
            parse_ratio(bad)
    assert parse_ratio("1:10,000") == 10_000 and pool_counts(400, 10_000) == (1, 399)
