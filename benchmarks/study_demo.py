"""Wall time of the demo study by stage, and of a second run of the same study (everything already done).

    python benchmarks/study_demo.py [--preset demo] [--keep DIR]

Runs the study twice in one process against a fresh SQLite store in a folder under the working directory (removed
afterwards unless --keep). Per stage: the summed duration of its cell runs as the tracking store recorded them.
Target: the re-run trains nothing and takes under 5 % of the first run's time.
"""

from __future__ import annotations

import argparse
import time

from scratch import scratch_store  # benchmarks/scratch.py (run as python benchmarks/...)

from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study
from cyto_ssrl.study.ledger import cell_runs


def timed_study(preset: str) -> float:
    start = time.perf_counter()
    run_study(load_config(preset), "bench", preset)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--keep", help="run in this folder and keep it (store, tiles, figures)")
    args = parser.parse_args()
    with scratch_store(args.keep, ".study-bench-") as folder:
        first_s = timed_study(args.preset)
        n_cells = len(cell_runs("bench"))
        second_s = timed_study(args.preset)
        runs = cell_runs("bench")
    runs["seconds"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
    by_stage = runs.groupby("tags.stage")["seconds"].agg(["count", "sum"])
    print(f"study preset {args.preset!r}: {n_cells} cells")
    for stage, row in by_stage.iterrows():
        print(f"  {stage:<11} {int(row['count']):4d} runs {row['sum']:8.1f} s")
    print(f"  {'overhead':<11}           {first_s - by_stage['sum'].sum():8.1f} s  (between cells: queries, claims)")
    print(f"first run                 : {first_s:8.1f} s")
    print(f"second run, nothing to do : {second_s:8.1f} s  (new cell runs: {len(runs) - n_cells})")
    print(f"ratio second/first (target < 0.05): {second_s / first_s:.3f}")
    if args.keep:
        print(f"kept: {folder} (mlflow ui --backend-store-uri sqlite:///{folder / 'mlruns.db'})")


if __name__ == "__main__":
    main()
