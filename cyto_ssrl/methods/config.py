"""Typed settings of stage 3: one SSL method on one backbone, with the paper's and the tiny CPU presets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    """Stage 3: one SSL method on one backbone. Unused method-specific fields are ignored by other methods."""

    method: str = "mae"
    backbone: str = "vit_tiny"  # vit_tiny|vit_small|vit_base (patch_size below) or any timm ResNet name
    patch_size: int = 8
    img_size: int = 64
    epochs: int = 4
    batch_size: int = 32  # global: split over processes and gradient-accumulation steps
    grad_accum_steps: int = 1
    blr: float = 1.5e-4  # lr = blr * global batch / 256 unless lr is given (MAE's rule)
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: int = 1
    weight_decay: float = 0.05
    mixed_precision: str = "no"  # no|fp16|bf16
    num_workers: int = 2
    checkpoint_every: int = 1  # epochs
    seed: int = 0
    # MAE
    mask_ratio: float = 0.5
    norm_pix_loss: bool = True
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    # contrastive / self-distillation heads
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    temperature: float = 0.1  # SimCLR NT-Xent; MoCo uses its own below
    moco_temperature: float = 0.07
    momentum: float = 0.999  # MoCo key encoder / DINO teacher EMA
    queue_size: int = 4096
    dino_out_dim: int = 1024
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9


PRETRAIN_PRESETS: dict[str, PretrainConfig] = {
    # CPU presets: a couple of minutes on 2 cores, 64 px tiles, and the loss still falls.
    # MAE's blr (1.5e-4) is set for ~800 epochs at batch 4,096; at batch 32 for a few hundred steps the encoder
    # barely leaves its initialisation (demo: reconstruction loss 0.82 after 16 epochs, 0.42 at 1.5e-3).
    "tiny-mae": PretrainConfig(blr=1.5e-3),
    "tiny-simclr": PretrainConfig(method="simclr", backbone="resnet18", blr=1.5e-3, weight_decay=1e-6),
    "tiny-dino": PretrainConfig(method="dino", blr=5e-4, weight_decay=0.04, momentum=0.996, dino_out_dim=1024),
    "tiny-moco": PretrainConfig(
        method="moco", backbone="resnet18", blr=1e-3, weight_decay=1e-6, queue_size=1024, momentum=0.99
    ),
    # The paper's Table 3. MAE: ViT-B/16, mask 0.5, lr 2.25e-4 at global batch 384 (= blr 1.5e-4 x 384 / 256).
    "paper-mae": PretrainConfig(
        backbone="vit_base",
        patch_size=16,
        img_size=224,
        epochs=200,
        batch_size=384,
        blr=1.5e-4,
        warmup_epochs=10,
        decoder_dim=512,
        decoder_depth=8,
        decoder_heads=16,
        num_workers=8,
        checkpoint_every=10,
    ),
    # SimCLR: ResNet-50, batch 512, lr 3e-3 (= blr 1.5e-3 x 512 / 256).
    "paper-simclr": PretrainConfig(
        method="simclr",
        backbone="resnet50",
        img_size=224,
        epochs=200,
        batch_size=512,
        blr=1.5e-3,
        weight_decay=1e-6,
        warmup_epochs=10,
        proj_hidden_dim=2048,
        num_workers=8,
        checkpoint_every=10,
    ),
    # DINO for Pap smears (Stegmueller et al.): ViT-S/16, global crops only, EMA teacher 0.996, centring.
    "stegmuller-dino": PretrainConfig(
        method="dino",
        backbone="vit_small",
        patch_size=16,
        img_size=224,
        epochs=100,
        batch_size=256,
        blr=5e-4,
        weight_decay=0.04,
        warmup_epochs=10,
        momentum=0.996,
        dino_out_dim=65536,
        num_workers=8,
        checkpoint_every=10,
    ),
    # MoCo v2 as CCRL (Nakhli et al.) uses it: temperature 0.07, momentum 0.999, 65,536 queued negatives.
    "ccrl-moco": PretrainConfig(
        method="moco",
        backbone="resnet50",
        img_size=224,
        epochs=200,
        batch_size=256,
        blr=1e-3,
        weight_decay=1e-6,
        warmup_epochs=10,
        queue_size=65536,
        proj_hidden_dim=2048,
        num_workers=8,
        checkpoint_every=10,
    ),
}


def pretrain_preset_name(name: str, method: str) -> str:
    """'tiny' and 'paper' name the variant of the chosen method (tiny-simclr, paper-mae ...)."""
    if name == "paper":
        return {"mae": "paper-mae", "simclr": "paper-simclr", "dino": "stegmuller-dino", "moco": "ccrl-moco"}.get(
            method, name
        )
    return f"tiny-{method}" if name == "tiny" else name
