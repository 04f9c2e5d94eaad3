"""mlflow run . -e tiles: slides (or cell crops, or the synthetic cohort) to a labelled tile manifest."""

from dataclasses import dataclass

from cyto_ssrl.cli import main, param, parse_balance, parse_mpp, parse_params, parse_partitions, parse_size
from cyto_ssrl.data.config import CsvAnnotationConfig
from cyto_ssrl.stages.tiles import run_tiles


@dataclass
class Params:
    source: str = param("synthetic", "synthetic | slides | cells")
    input: str = param("none", "folder of slides/images or cell-class folders (not read for synthetic)", True)
    output: str = param("outputs/tiles", "folder of the tiles and the manifest")
    preset: str = param("tiny", "tiny | tiny-shared (synthetic positives that look like enlarged negatives) | paper")
    seed: int = param(0)
    annotations: str = param(
        "beside",
        "folder of QuPath GeoJSON, or a CSV of cell points; 'beside': a <slide>.geojson beside each slide",
        True,
    )
    csv_image_size: str = param("slide", "size the CSV coordinates refer to, e.g. 1376x1020; 'slide': level-0 px", True)
    mpp: str = param(
        "metadata",
        "um/px of slides without it in their metadata: 0.25 or slide=0.25,other=0.5 (`mlflow run` logs these "
        "slide names: for slides named after patients use slides.csv's mpp column)",
        True,
    )
    partitions: str = param("preset", "shares, e.g. ssrl=0.5,downstream=0.3,evaluation=0.2", True)
    # Not an `unset` parameter: 'none' is a value here (no partition balanced), not 'not given'.
    balance: str = param(
        "preset",
        "partitions drawn 1:1 positive:negative: downstream,evaluation (the presets'), "
        "downstream, or none (every partition at the collection's prevalence)",
    )
    strict: bool = param(
        False, "true: a slide that gives no tile stops the run; false: it is skipped and listed in skipped_slides.csv"
    )
    pseudonymize: bool = param(
        True, "true: slide, patient and tile ids are keyed hashes (slide names identify patients); false: real names"
    )
    pseudonym_key: str = param(
        "output", "file of the pseudonyms' secret; 'output': <output>/private/pseudonym.key", True
    )
    tile_size: int = param("preset", "tile side in px", True)
    target_mpp: float = param("preset", "um/px of the tiles", True)
    min_deposit: float = param("preset", "share of a tile that must be cell deposit", True)
    workers: int = param("preset", "worker processes", True)


def run() -> None:
    p = parse_params(Params, __doc__)
    default_mpp, slide_mpp = parse_mpp(p.mpp)
    overrides = dict(
        seed=p.seed,
        tile_size=p.tile_size,
        target_mpp=p.target_mpp,
        min_deposit=p.min_deposit,
        workers=p.workers,
        default_mpp=default_mpp,
        slide_mpp=slide_mpp or None,
        strict=p.strict,
        pseudonymize=p.pseudonymize,
        pseudonym_key=p.pseudonym_key,
        partitions=parse_partitions(p.partitions),
        balance=parse_balance(p.balance),
    )
    if parse_size(p.csv_image_size):
        overrides["csv"] = CsvAnnotationConfig(image_size=parse_size(p.csv_image_size))
    run_id, manifest = run_tiles(p.source, p.input, p.output, p.preset, p.annotations, **overrides)
    print(f"tiles run {run_id}: manifest at {manifest}")


if __name__ == "__main__":
    main(run)
