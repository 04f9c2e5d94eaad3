"""Masked autoencoder (He et al. 2022) whose encoder is the timm ViT that gets exported.

The encoder is not a copy: MAE runs the backbone's own patch_embed, cls_token, blocks and norm on the visible
patches, so after pre-training `self.backbone` is an ordinary timm VisionTransformer that embeds whole images.
Its learned position embedding is replaced by a fixed 2-D sine-cosine buffer, which it keeps when exported.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods.base import SSLMethod, create_backbone
from cyto_ssrl.methods.config import PretrainConfig


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> Tensor:
    """(1, 1 + rows * cols, dim) fixed position embeddings: half the channels encode the row, half the column.

    The leading all-zero slot belongs to the cls token, which has no position.
    """
    if dim % 4:
        raise CytoError(f"a sine-cosine position embedding needs a width divisible by 4, not {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")

    def encode(positions: Tensor) -> Tensor:
        angles = positions.reshape(-1, 1).double() * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    patches = torch.cat([encode(rows), encode(cols)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float().unsqueeze(0)


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random int(L * (1 - mask_ratio)) of each sample's L tokens (B, L, D).

    Returns the kept tokens (B, L_keep, D) in shuffled order, the mask (B, L) with 1 where a token was dropped,
    and ids_restore (B, L), the permutation that puts shuffled tokens back in patch order.
    """
    b, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.rand(b, length, device=x.device).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = torch.ones(b, length, device=x.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, patch_size**2 * C), patches in the row-major order of the ViT's patch embedding."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class MAE(SSLMethod):
    view_kinds = ("mae",)

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        if not 0 < cfg.mask_ratio < 1:
            raise CytoError(f"mask_ratio must lie strictly between 0 and 1, not {cfg.mask_ratio}")
        backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.patch_size)
        if not isinstance(backbone, VisionTransformer):
            raise CytoError(f"MAE needs a ViT backbone (vit_tiny|vit_small|vit_base), not {cfg.backbone!r}")
        grid = backbone.patch_embed.grid_size
        n_patches = grid[0] * grid[1]
        if not 0 < int(n_patches * (1 - cfg.mask_ratio)) < n_patches:
            raise CytoError(f"mask_ratio {cfg.mask_ratio} leaves no visible or no masked patch of {n_patches}")
        if cfg.decoder_dim % cfg.decoder_heads:
            raise CytoError(f"decoder_dim {cfg.decoder_dim} is not divisible by decoder_heads {cfg.decoder_heads}")
        # A buffer, not a frozen Parameter: no optimizer or requires_grad_(True) can make it learn during
        # pre-training, and the state_dict key stays timm's "pos_embed", so a plain timm ViT loads the export.
        del backbone.pos_embed
        backbone.register_buffer("pos_embed", sincos_pos_embed(backbone.embed_dim, grid))
        self.backbone = backbone

        self.decoder_embed = nn.Linear(backbone.embed_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(cfg.decoder_dim, grid))
        self.decoder_blocks = nn.Sequential(
            *[Block(cfg.decoder_dim, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, cfg.patch_size**2 * 3)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # MAE's choice: xavier-uniform linears train the light decoder more stably than PyTorch's default.
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("backbone"):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The backbone's transformer on the cls token and a random visible subset of patches."""
        vit = self.backbone
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.cfg.mask_ratio)
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = vit.blocks(vit.norm_pre(torch.cat([cls, x], dim=1)))
        return vit.norm(x), mask, ids_restore

    def decode(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Pixel predictions (B, L, patch_size**2 * 3) for every patch from the visible tokens plus mask tokens."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        masked = self.mask_token.expand(b, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward(self, views: list[Tensor]) -> Tensor:
        (images,) = views
        latent, mask, ids_restore = self.encode(images)
        pred = self.decode(latent, ids_restore)
        target = patchify(images, self.cfg.patch_size)
        if self.cfg.norm_pix_loss:
            # Per-patch normalised targets make the model reconstruct local structure, not patch brightness.
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        # Only masked patches count: copying visible pixels through would be trivial.
        return (per_patch * mask).sum() / mask.sum()
