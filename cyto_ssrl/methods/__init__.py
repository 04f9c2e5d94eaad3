"""Self-supervised methods by name: `build_method(cfg)` is the one way the trainer makes one."""

from __future__ import annotations

from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods.base import SSLMethod, create_backbone
from cyto_ssrl.methods.config import PretrainConfig
from cyto_ssrl.methods.dino import DINO
from cyto_ssrl.methods.mae import MAE
from cyto_ssrl.methods.moco import MoCo
from cyto_ssrl.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {"mae": MAE, "simclr": SimCLR, "dino": DINO, "moco": MoCo}


def build_method(cfg: PretrainConfig) -> SSLMethod:
    """The method `cfg.method` on `cfg.backbone`; a CytoError for unknown names or a pairing that cannot work."""
    if cfg.method not in METHODS:
        raise CytoError(f"unknown method {cfg.method!r}; choose one of {'|'.join(METHODS)}")
    return METHODS[cfg.method](cfg)


__all__ = ["METHODS", "SSLMethod", "build_method", "create_backbone"]
