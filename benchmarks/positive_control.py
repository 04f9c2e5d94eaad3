"""The demo cohort as a positive control: the demo study on both looks of its positive cells.

    python benchmarks/positive_control.py [--preset demo] [--keep DIR]

SyntheticConfig.positive_look is the knob. "distinct" positives (tile preset `tiny`, the demo's) look like no
negative cell, so an encoder learns them only from its pool's positive tiles: the study should find accuracy falling
from 1:1 to 1:100 at small budgets. "shared" positives (`tiny-shared`) are negative cells with enlarged nuclei, which
every pool teaches: the study should find no drop. Both studies run in one process against a fresh SQLite store in a
folder under the working directory (removed afterwards unless --keep). Printed per look: the paired drop tests of
the linear probe's accuracy (Holm-adjusted over the budgets and ratios), the paired gain over random init, and the
wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from scratch import scratch_store  # benchmarks/scratch.py (run as python benchmarks/...)

from analysis.query import downstream_results
from analysis.stats import baseline_gains, drops
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study

LOOKS = {"distinct": "tiny", "shared": "tiny-shared"}  # positive_look -> the tile preset that sets it
COLUMNS = ["method", "mode", "budget", "ratio", "n_pairs", "reference_mean_pct", "ratio_mean_pct", "drop_pp"]


def control(preset: str, look: str) -> float:
    """Run the preset's study on the cohort with this look; returns its wall time in seconds."""
    cfg = dataclasses.replace(load_config(preset), tile_preset=LOOKS[look], output=f"outputs/{look}")
    start = time.perf_counter()
    run_study(cfg, f"control-{look}", preset)
    return time.perf_counter() - start


def report(look: str, seconds: float) -> None:
    results = downstream_results(f"control-{look}")
    linear = results[results["mode"] == "linear"]
    print(f"\n== positive_look={look}: {seconds:.0f} s, {len(results)} downstream runs ==")
    print("accuracy drop from 1:1 (percentage points; paired t-test over resamplings, p Holm-adjusted):")
    print(drops(linear, "acc")[[*COLUMNS, "p_value", "p_holm", "significant"]].round(3).to_string(index=False))
    print("gain over random init (percentage points; paired t-test, p Holm-adjusted):")
    print(baseline_gains(linear, "acc").round(3).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--keep", help="run in this folder and keep it (store, tiles, figures)")
    args = parser.parse_args()
    with scratch_store(args.keep, ".control-bench-"):
        for look in LOOKS:
            report(look, control(args.preset, look))


if __name__ == "__main__":
    main()
