"""Stage 2 as a run: an unlabeled pre-training pool at ratio 1:r from a manifest's ssrl partition."""

from __future__ import annotations

from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.data.pools import make_pool, parse_ratio, pool_digest, ratio_label, read_manifest
from cyto_ssrl.files import write_parquet
from cyto_ssrl.stages.tiles import resolve_manifest


def run_pools(
    manifest: str | None = None,
    ratio: str = "1:1",
    pool_size: int = 200,
    seed: int = 0,
    allow_smaller_pool: bool = False,
    output_dir: str = "outputs/pools",
    run_id: str | None = None,
) -> tuple[str, Path, str]:
    """Stage 2 as a run: returns (run id, pool path, pool digest)."""
    r = parse_ratio(ratio)
    params = {
        "manifest": manifest,
        "ratio": ratio_label(r),
        "ratio_r": r,
        "pool_size": pool_size,
        "seed": seed,
        "allow_smaller_pool": allow_smaller_pool,
    }
    run_name = f"pool-{ratio_label(r)}-n{pool_size}-s{seed}"
    with tracking.stage_run("pools", params, tags={"ratio": ratio_label(r)}, run_name=run_name, run_id=run_id) as run:
        manifest_path = resolve_manifest(manifest, seed)
        tiles = read_manifest(manifest_path)
        pool = make_pool(tiles, r, pool_size, seed, allow_smaller_pool)
        digest = pool_digest(pool)
        path = Path(output_dir).resolve() / f"pool_1-{r}_{digest}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(pool, path)
        counts = pool["label"].value_counts()
        if len(pool) != pool_size:
            print(f"allow_smaller_pool: the partition fits {len(pool)} tiles at {ratio_label(r)}, not {pool_size}")
        tracking.log_metrics(
            {"pool_size": len(pool), "n_positive": counts.get("positive", 0), "n_negative": counts.get("negative", 0)}
        )
        tracking.log_dataset(tiles, manifest_path, name="tiles", context="source")
        tracking.log_dataset(pool, path, name=f"pool-{ratio_label(r)}", context="pool")
        tracking.set_tags({"pool_path": path, "pool_digest": digest, "manifest": manifest_path})
    return run.info.run_id, path, digest
