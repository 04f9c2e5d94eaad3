"""mlflow run . -e tiles: slides (or cell crops, or the synthetic cohort) to a labelled tile manifest."""

import argparse

from cyto_ssrl.cli import integer, main, optional, parse_mpp, parse_partitions, parse_size
from cyto_ssrl.config import CsvAnnotationConfig
from cyto_ssrl.stages import run_tiles


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="synthetic", help="synthetic | slides | cells")
    parser.add_argument("--input", default="", help="folder of slides/images or cell-class folders")
    parser.add_argument("--output", default="outputs/tiles")
    parser.add_argument("--preset", default="tiny", help="tiny | paper")
    parser.add_argument("--seed", type=integer, default=0)
    parser.add_argument("--annotations", default="", help="folder of QuPath GeoJSON, or a CSV of cell points")
    parser.add_argument("--csv-image-size", default="", help="size the CSV coordinates refer to, e.g. 1376x1020")
    parser.add_argument("--mpp", default="", help="um/px for slides without it: 0.25 or slide=0.25,other=0.5")
    parser.add_argument("--partitions", default="", help="shares, e.g. ssrl=0.5,downstream=0.3,evaluation=0.2")
    parser.add_argument("--tile-size", type=integer, default=None)
    parser.add_argument("--target-mpp", type=float, default=None)
    parser.add_argument("--min-deposit", type=float, default=None)
    parser.add_argument("--workers", type=integer, default=None)
    args = parser.parse_args()

    default_mpp, slide_mpp = parse_mpp(args.mpp)
    overrides = dict(seed=args.seed, tile_size=args.tile_size, target_mpp=args.target_mpp,
                     min_deposit=args.min_deposit, workers=args.workers, default_mpp=default_mpp,
                     slide_mpp=slide_mpp or None, partitions=parse_partitions(args.partitions))  # fmt: skip
    if parse_size(args.csv_image_size):
        overrides["csv"] = CsvAnnotationConfig(image_size=parse_size(args.csv_image_size))
    run_id, manifest = run_tiles(args.source, optional(args.input), args.output, args.preset,
                                 optional(args.annotations), **overrides)  # fmt: skip
    print(f"tiles run {run_id}: manifest at {manifest}")


if __name__ == "__main__":
    main(run)
