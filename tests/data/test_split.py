"""Partitions: a collection's own shares, 1:1 draws before any tile is cut, an ssrl partition never balanced, and the
synthetic default's partitions serving every paper budget and pool."""

from __future__ import annotations

import pandas as pd
import pytest

from cyto_ssrl.cli import parse_balance
from cyto_ssrl.config import preset
from cyto_ssrl.data.config import TILE_PRESETS
from cyto_ssrl.data.pools import make_pool
from cyto_ssrl.data.tiles import make_tiles
from cyto_ssrl.downstream.budgets import budget_counts, draw_budget
from cyto_ssrl.downstream.features import labelled_tiles
from cyto_ssrl.errors import CytoError

from .helpers import herlev_subset


def test_a_small_collection_takes_its_own_partition_shares(shared_data, tmp_path):
    from cyto_ssrl.cli import parse_partitions

    shares = parse_partitions("ssrl=0.5, downstream=0.3, evaluation=0.2")
    cfg = preset(TILE_PRESETS, "tiny", workers=2, partitions=shares, balance=())
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    counts = make_tiles("cells", folder, tmp_path / "h", cfg)["partition"].value_counts()
    assert counts.to_dict() == pytest.approx({"ssrl": 107.5, "downstream": 64.5, "evaluation": 43}, abs=4)
    for bad, message in [
        ("ssrl=0.5,evaluaton=0.5", "partition 'evaluaton' is not one of ssrl, downstream"),
        ("ssrl=half", "partition share 'ssrl=half' is not a number"),
    ]:
        with pytest.raises(CytoError, match=message):
            parse_partitions(bad)


def test_the_synthetic_default_serves_every_paper_budget_and_pool(synthetic_default):
    """With no parameters, tiles -> pretrain -> downstream runs the paper's five budgets and pools of 200 at 1:1 and
    1:100; downstream and evaluation are 1:1, of positive and negative tiles only, and ssrl keeps every tile."""
    manifest = pd.read_parquet(synthetic_default[2])
    counts = pd.crosstab(manifest["partition"], manifest["label"])
    for name in ("downstream", "evaluation"):
        assert set(manifest.loc[manifest["partition"] == name, "label"]) == {"positive", "negative"}, name
        assert counts.loc[name, "positive"] == counts.loc[name, "negative"], name
    assert counts.loc["evaluation", "positive"] >= 30
    assert counts.loc["ssrl", "ambiguous"] > 0  # ssrl is not balanced: its ambiguous tiles stay for the pools
    downstream = labelled_tiles(manifest, "downstream")
    for budget in (100, 50, 10, 5, 1):
        train, val = draw_budget(downstream, budget, resample=0, seed=0)
        assert (len(train), len(val)) == tuple(2 * n for n in budget_counts(len(downstream), budget)), budget
        assert budget != 100 or len(train) + len(val) == len(downstream)  # 100 % is the whole partition
    for r in (1, 100):
        pool = make_pool(manifest, r, 200, seed=0)
        assert len(pool) == 200 and (pool["label"] == "positive").sum() == round(200 / (r + 1)), r
    on_disk = {str(p) for p in (synthetic_default[2].parent / "tiles").rglob("*.jpg")}
    assert on_disk == set(manifest["path"])  # no tile a 1:1 draw dropped was cut


def test_balanced_partitions_are_drawn_1to1_before_any_tile_is_cut(shared_data, tmp_path):
    folder = herlev_subset(shared_data, tmp_path / "herlev")
    key = str(tmp_path / "pseudonym.key")  # one key: the same crops get the same pseudonymous ids in every run
    cfg = preset(TILE_PRESETS, "tiny", workers=2, pseudonym_key=key)
    balanced = make_tiles("cells", folder, tmp_path / "balanced", cfg)
    natural_cfg = preset(TILE_PRESETS, "tiny", workers=2, balance=(), pseudonym_key=key)
    natural = make_tiles("cells", folder, tmp_path / "natural", natural_cfg)
    for name in ("downstream", "evaluation"):
        drawn, whole = (m[m["partition"] == name] for m in (balanced, natural))
        counts, available = drawn["label"].value_counts(), whole["label"].value_counts()
        assert set(counts.index) == {"positive", "negative"} and counts["positive"] == counts["negative"], name
        assert counts["positive"] == min(available["positive"], available["negative"]), name  # the minority, whole
        assert set(drawn["tile_id"]) < set(whole["tile_id"]), name
    ssrl = [set(m.loc[m["partition"] == "ssrl", "tile_id"]) for m in (balanced, natural)]
    assert ssrl[0] == ssrl[1]  # the split comes first; ssrl keeps every tile
    report = {row["partition"]: row for row in balanced.attrs["balance"]}
    assert report["ssrl"]["dropped"] == 0
    assert sum(row["dropped"] for row in report.values()) == len(natural) - len(balanced)
    on_disk = {str(p) for p in (tmp_path / "balanced" / "tiles").rglob("*.jpg")}
    assert on_disk == set(balanced["path"])  # a dropped tile was never cut
    again = make_tiles("cells", folder, tmp_path / "again", cfg)
    assert again.drop(columns="path").equals(balanced.drop(columns="path"))  # seeded


def test_ssrl_is_never_balanced(tmp_path):
    cfg = preset(TILE_PRESETS, "tiny", balance=("ssrl",))
    for refuse in (lambda: parse_balance("ssrl"), lambda: make_tiles("synthetic", None, tmp_path / "out", cfg)):
        with pytest.raises(CytoError, match="the ssrl partition cannot be balanced: pools are drawn from") as caught:
            refuse()
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # refused before a slide is drawn
    assert parse_balance("") is None and parse_balance("none") == ()
    assert parse_balance(" downstream ") == ("downstream",)
    with pytest.raises(CytoError, match="balance: partition 'evaluaton' is not one of"):
        parse_balance("downstream,evaluaton")
