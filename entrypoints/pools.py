"""mlflow run . -e pools: an unlabeled pre-training pool at ratio 1:r from a tile manifest's ssrl partition."""

import argparse

from cyto_ssrl.cli import integer, main, optional
from cyto_ssrl.stages import run_pools


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="", help="manifest.parquet or a tiles run id (default: tile the synthetic cohort)")
    parser.add_argument("--ratio", default="1:1", help="positive:negative as 1:r, e.g. 1:100")
    parser.add_argument("--pool-size", type=integer, default=200)
    parser.add_argument("--seed", type=integer, default=0)
    parser.add_argument("--allow-smaller-pool", default="false", help="shrink the pool to keep the ratio")
    parser.add_argument("--output", default="outputs/pools")
    args = parser.parse_args()
    run_id, path, digest = run_pools(optional(args.manifest), args.ratio, args.pool_size, args.seed,
                                     args.allow_smaller_pool.lower() == "true", args.output)  # fmt: skip
    print(f"pools run {run_id}: pool {digest} at {path}")


if __name__ == "__main__":
    main(run)
