"""Stage 1 as a run: slides (or cell crops, or the synthetic cohort) to a labelled tile manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from cyto_ssrl import tracking
from cyto_ssrl.config import flatten, preset
from cyto_ssrl.data.config import TILE_PRESETS, TileConfig
from cyto_ssrl.data.pseudonyms import key_path, load_key, pseudonym
from cyto_ssrl.data.tiles import make_tiles, summarize
from cyto_ssrl.lineage import manifest_path


def run_tiles(
    source: str = "synthetic",
    input_dir: str | None = None,
    output_dir: str = "outputs/tiles",
    preset_name: str = "tiny",
    annotations: str | None = None,
    run_id: str | None = None,
    **overrides,
) -> tuple[str, Path]:
    """Stage 1 as a run (or in `run_id`, a study cell's): returns (run id, manifest path). Overrides are TileConfig
    fields."""
    cfg: TileConfig = preset(TILE_PRESETS, preset_name, **overrides)
    output = Path(output_dir).resolve()
    settings = {**flatten(cfg), "slide_mpp": logged_slide_mpp(cfg, output)}
    params = {
        "source": source,
        "input": input_dir,
        "output": output,
        "preset": preset_name,
        "annotations": annotations,
        **settings,
    }
    with tracking.stage_run("tiles", params, run_name=f"tiles-{source}", run_id=run_id) as run:
        manifest = make_tiles(source, input_dir, output, cfg, annotations)
        manifest_path = output / "manifest.parquet"
        by_partition, per_slide = summarize(manifest)
        balance = pd.DataFrame(manifest.attrs["balance"])
        # No path column: an input slide's path may name its patient.
        skipped = pd.DataFrame(manifest.attrs["skipped_slides"], columns=["slide_id", "reason"])
        # summary.md: tiles per partition x label, what the 1:1 draws dropped, and every slide that gave no tile.
        skip_lines = [f"{len(skipped)} slide(s) skipped: they gave no tile"]
        skip_lines += [f"- {row.slide_id}: {row.reason}" for row in skipped.itertuples()]
        sections = [by_partition.to_markdown(index=False), balance.to_markdown(index=False), "\n".join(skip_lines)]
        (output / "summary.md").write_text("\n\n".join(sections) + "\n")
        tracking.log_artifact(output / "summary.md")
        tracking.log_table(by_partition, output / "summary.csv")
        tracking.log_table(per_slide, output / "summary_per_slide.csv")
        tracking.log_table(balance, output / "summary_balance.csv")
        tracking.log_table(skipped, output / "skipped_slides.csv")
        tracking.log_artifact(manifest_path)
        counts = manifest.groupby(["partition", "label"]).size()
        tracking.log_metrics(
            {
                "n_tiles": len(manifest),
                "n_slides": manifest["slide_id"].nunique(),
                "slides_skipped": len(skipped),
                **{f"n_{p}_{lab}": n for (p, lab), n in counts.items()},
                **{f"n_{r.partition}_{k}": getattr(r, k) for r in balance.itertuples() for k in ("kept", "dropped")},
            }
        )
        tracking.log_dataset(manifest, manifest_path, name=f"tiles-{source}", context="tiles")
        tracking.set_tags(
            {
                "manifest": manifest_path,
                "tiles_digest": tiles_digest(source, input_dir, annotations, settings),
                "manifest_sha256": file_digest(manifest_path),
            }
        )
    return run.info.run_id, manifest_path


def logged_slide_mpp(cfg: TileConfig, output: Path) -> dict[str, float]:
    """The per-slide um/px overrides as the run's params show them: by pseudonym, the slide names stay local."""
    if not cfg.pseudonymize or not cfg.slide_mpp:
        return cfg.slide_mpp
    key = load_key(key_path(cfg.pseudonym_key, output))
    return {pseudonym(key, "slide", slide): mpp for slide, mpp in cfg.slide_mpp.items()}


def tiles_digest(source: str, input_dir, annotations, settings: dict) -> str:
    """What a tile manifest was made from and how (the TileConfig as logged: slides by pseudonym): equal digests,
    equal manifests, under one pseudonym key."""
    made_of = json.dumps([source, str(input_dir), str(annotations), settings], sort_keys=True, default=str)
    return hashlib.sha256(made_of.encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def synthetic_default(seed: int = 0) -> Path:
    """The synthetic default's manifest: the one a finished tiles run made with the same settings, when its file is
    still the one that run wrote; else tiled now (so `pools` and `pretrain` with their defaults tile it once)."""
    cfg = preset(TILE_PRESETS, "tiny", seed=seed)
    run_id = tracking.find_run("tiles", tiles_digest=tiles_digest("synthetic", None, None, flatten(cfg)))
    if run_id:
        tags = tracking.run_tags(run_id)
        path = Path(tags["manifest"])
        if path.is_file() and file_digest(path) == tags.get("manifest_sha256"):
            print(f"using the synthetic default tiled by run {run_id}: {path}")
            return path
    return run_tiles(seed=seed)[1]


def resolve_manifest(manifest: str | None, seed: int = 0) -> Path:
    """A manifest path, a tiles run id (its `manifest` tag), or None: the synthetic default."""
    return synthetic_default(seed) if manifest is None else manifest_path(manifest)
