"""What a run was made from, as the tracking store recorded it: a tiles run's manifest, the manifest a pool was
drawn from, the tiles run behind a pool, and the manifest a registered backbone traces back to.
"""

from __future__ import annotations

from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.errors import CytoError


def manifest_path(manifest: str) -> Path:
    """A manifest file, or a tiles run id (its `manifest` tag)."""
    if Path(manifest).suffix == ".parquet" or Path(manifest).exists():
        return Path(manifest)
    tags = tracking.run_tags(manifest)
    if "manifest" not in tags:
        raise CytoError(f"{manifest!r} is neither a manifest file nor a tiles run with a manifest")
    return Path(tags["manifest"])


def pool_manifest(pool_path: str | None) -> str | None:
    """The tile manifest a pool was drawn from, as its pools run recorded it (None when unknown)."""
    pools_run = tracking.find_run("pools", pool_path=str(pool_path)) if pool_path else None
    return tracking.run_tags(pools_run).get("manifest") if pools_run else None


def tiles_run(pool_path: str) -> str:
    """The tiles run whose manifest the pool was drawn from ('' when the pool came from elsewhere)."""
    manifest = pool_manifest(pool_path)
    return (tracking.find_run("tiles", manifest=manifest) if manifest else None) or ""


def model_manifest(model_uri: str, version) -> Path:
    """Model version -> its pre-training run -> the pool -> the pools run that drew it -> the tile manifest."""
    run_id = version.tags.get("pretrain_run_id")
    manifest = pool_manifest(tracking.run_tags(run_id).get("pool_path")) if run_id else None
    if not manifest:
        raise CytoError(f"cannot trace the tile manifest of {model_uri} through its pre-training pool; pass manifest")
    return Path(manifest)
