"""mlflow run . -e pretrain: self-supervised pre-training on a pool, registered in the model registry with its ratio."""

from dataclasses import dataclass

from cyto_ssrl.cli import main, param, parse_params
from cyto_ssrl.stages.pretrain import run_pretrain

PRESETS = "tiny | paper | tiny-<method> | paper-mae | paper-simclr | stegmuller-dino | ccrl-moco"


@dataclass
class Params:
    method: str = param("mae", "mae | simclr | dino | moco")
    ratio: str = param("1:1", "positive:negative of the pool, 1:r")
    preset: str = param("tiny", PRESETS)
    manifest: str = param("synthetic", "tile manifest or tiles run id; 'synthetic' tiles the synthetic cohort", True)
    pool: str = param("draw", "a pool parquet; 'draw' draws one from the manifest", True)
    pool_size: int = param(200, "tiles of a drawn pool")
    seed: int = param(0)
    num_processes: int = param(1, ">1 runs `accelerate launch` with that many processes (one per GPU)")
    resume: str = param("none", "run id of a killed pre-training run to continue in that run", True)
    init: str = param("none", "register an external backbone from this local weights file instead", True)
    backbone: str = param("preset", "vit_tiny | vit_small | vit_base | a timm resnet", True)
    epochs: int = param("preset", "epochs", True)
    batch_size: int = param("preset", "global batch size", True)
    mask_ratio: float = param("preset", "MAE's share of masked patches", True)
    mixed_precision: str = param("preset", "no | fp16 | bf16", True)


def run() -> None:
    p = parse_params(Params, __doc__)
    run_id, uri = run_pretrain(
        p.method,
        p.ratio,
        p.preset,
        p.manifest,
        p.pool,
        p.pool_size,
        p.seed,
        p.num_processes,
        p.resume,
        p.init,
        backbone=p.backbone,
        epochs=p.epochs,
        batch_size=p.batch_size,
        mask_ratio=p.mask_ratio,
        mixed_precision=p.mixed_precision,
    )
    print(f"pretrain run {run_id}: registered {uri}")


if __name__ == "__main__":
    main(run)
