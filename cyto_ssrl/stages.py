"""Each stage of the study as one tracked MLflow run: the pure work lives in its package, the logging here.

Entry points and the study call these; tests call them too.
"""

from __future__ import annotations

from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.config import TILE_PRESETS, TileConfig, flatten, preset
from cyto_ssrl.data.tiles import make_tiles, summarize


def run_tiles(source: str = "synthetic", input_dir: str | None = None, output_dir: str = "outputs/tiles",
              preset_name: str = "tiny", annotations: str | None = None, **overrides) -> tuple[str, Path]:  # fmt: skip
    """Stage 1 as a run: returns (run id, manifest path). Overrides are TileConfig fields."""
    cfg: TileConfig = preset(TILE_PRESETS, preset_name, **overrides)
    output = Path(output_dir).resolve()
    params = {"source": source, "input": input_dir, "output": output, "preset": preset_name,
              "annotations": annotations, **flatten(cfg)}  # fmt: skip
    with tracking.stage_run("tiles", params, run_name=f"tiles-{source}") as run:
        manifest = make_tiles(source, input_dir, output, cfg, annotations)
        manifest_path = output / "manifest.parquet"
        by_partition, per_slide = summarize(manifest)
        tracking.log_table(by_partition, output / "summary.md")
        tracking.log_table(by_partition, output / "summary.csv")
        tracking.log_table(per_slide, output / "summary_per_slide.csv")
        tracking.log_artifact(manifest_path)
        counts = manifest.groupby(["partition", "label"]).size()
        tracking.log_metrics({"n_tiles": len(manifest), "n_slides": manifest["slide_id"].nunique(),
                              **{f"n_{p}_{lab}": n for (p, lab), n in counts.items()}})  # fmt: skip
        tracking.log_dataset(manifest, manifest_path, name=f"tiles-{source}", context="tiles")
        tracking.set_tags({"manifest": manifest_path})
    return run.info.run_id, manifest_path
