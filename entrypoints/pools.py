"""mlflow run . -e pools: an unlabeled pre-training pool at ratio 1:r from a tile manifest's ssrl partition."""

from dataclasses import dataclass

from cyto_ssrl.cli import main, param, parse_params
from cyto_ssrl.stages.pools import run_pools


@dataclass
class Params:
    manifest: str = param(
        "synthetic", "manifest.parquet or a tiles run id; 'synthetic' tiles the synthetic cohort", True
    )
    ratio: str = param("1:1", "positive:negative as 1:r, e.g. 1:100")
    pool_size: int = param(200, "tiles in the pool")
    seed: int = param(0)
    allow_smaller_pool: bool = param(False, "shrink the pool to keep the ratio when the partition is too small")
    output: str = param("outputs/pools", "folder of the pool files")


def run() -> None:
    p = parse_params(Params, __doc__)
    run_id, path, digest = run_pools(p.manifest, p.ratio, p.pool_size, p.seed, p.allow_smaller_pool, p.output)
    print(f"pools run {run_id}: pool {digest} at {path}")


if __name__ == "__main__":
    main(run)
