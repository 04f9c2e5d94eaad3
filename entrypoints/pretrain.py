"""mlflow run . -e pretrain: self-supervised pre-training on a pool, registered in the model registry with its ratio."""

import argparse

from cyto_ssrl.cli import integer, main, optional
from cyto_ssrl.stages import run_pretrain


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="mae", help="mae | simclr | dino | moco")
    parser.add_argument("--ratio", default="1:1", help="positive:negative of the pool, 1:r")
    parser.add_argument("--preset", default="tiny", help="tiny | paper | tiny-<method> | paper-mae | paper-simclr | stegmuller-dino | ccrl-moco")
    parser.add_argument("--manifest", default="", help="tile manifest or tiles run id (default: synthetic cohort)")
    parser.add_argument("--pool", default="", help="a pool parquet (default: drawn on the fly)")
    parser.add_argument("--pool-size", type=integer, default=200)
    parser.add_argument("--seed", type=integer, default=0)
    parser.add_argument("--num-processes", type=integer, default=1, help=">1 launches accelerate with that many processes")
    parser.add_argument("--resume", default="", help="run id of a killed pre-training run to continue")
    parser.add_argument("--init", default="", help="register an external backbone from this local weights file")
    parser.add_argument("--backbone", default="")
    parser.add_argument("--epochs", type=integer, default=None)
    parser.add_argument("--batch-size", type=integer, default=None)
    parser.add_argument("--mask-ratio", type=float, default=None)
    parser.add_argument("--mixed-precision", default="", help="no | fp16 | bf16")
    args = parser.parse_args()
    run_id, uri = run_pretrain(
        args.method, args.ratio, args.preset, optional(args.manifest), optional(args.pool), args.pool_size, args.seed,
        args.num_processes, optional(args.resume), optional(args.init), backbone=optional(args.backbone),
        epochs=args.epochs, batch_size=args.batch_size, mask_ratio=args.mask_ratio,
        mixed_precision=optional(args.mixed_precision),
    )
    print(f"pretrain run {run_id}: registered {uri}")


if __name__ == "__main__":
    main(run)
