"""How a backbone is registered: its version's tags (one set, for pre-trained and external backbones alike), its
names, alias and descriptions, and the model URI the run then carries."""

from __future__ import annotations

import pandas as pd
import torch

from cyto_ssrl import names, tracking
from cyto_ssrl.data.pools import pool_digest, ratio_alias, ratio_label
from cyto_ssrl.lineage import tiles_run
from cyto_ssrl.methods.config import PretrainConfig

FIND_EVALUATIONS = "The runs that evaluated it: `tags.model_name = '{name}' and tags.model_version = '{{version}}'`."
LOAD = "Load: `mlflow.pytorch.load_model('models:/{name}/{{version}}')`."


def version_tags(cfg: PretrainConfig, preset_name: str, run_id: str, **lineage) -> dict:
    """Every version's tags: how its backbone was made; `lineage` gives the pool's (ratio, pool ...) or says there
    was none (an external backbone)."""
    made = {
        "ratio": names.EXTERNAL,
        "ratio_r": 0,
        "method": names.EXTERNAL,
        "pool_digest": "",
        "pool_size": 0,
        "epochs": 0,
        "tiles_run_id": "",
    }
    return {
        **made,
        "backbone": cfg.backbone,
        "preset": preset_name,
        "pretrain_run_id": run_id,
        "img_size": cfg.img_size,
        **lineage,
    }


def pretrained(cfg: PretrainConfig, preset_name: str, run_id: str, pool: pd.DataFrame, pool_path: str, r: int):
    """The registration of a backbone pre-trained on `pool` at 1:r: version of cyto-<method>-<backbone>, alias r<r>."""
    ratio = ratio_label(r)
    tags = version_tags(
        cfg,
        preset_name,
        run_id,
        ratio=ratio,
        ratio_r=r,
        method=cfg.method,
        epochs=cfg.epochs,
        pool_digest=pool_digest(pool),
        pool_size=len(pool),
        tiles_run_id=tiles_run(pool_path),
        pretrain_seed=cfg.seed,
    )
    name = names.registered_model(cfg.method, cfg.backbone)
    label = names.pretrained_label(cfg.method, cfg.backbone, ratio, cfg.seed)
    return tracking.Registration(
        model_name=name,
        alias=ratio_alias(r),
        logged_name=names.logged_model_name(label),
        step=cfg.epochs - 1,
        tags=tags,
        model_description=f"{cfg.method} backbones ({cfg.backbone}) pre-trained by cyto_ssrl, one version per "
        "pre-training run, tagged with their pool's ratio (`ratio`, numeric `ratio_r`), digest and size. The alias "
        f"`r<r>` points at the newest version pre-trained at 1:r. Load one with "
        f"`mlflow.pytorch.load_model('models:/{name}@r100')`.",
        version_description=f"{label}: {cfg.method} {cfg.backbone} pre-trained for {cfg.epochs} epochs (preset "
        f"{preset_name}) on pool {tags['pool_digest']}, {len(pool)} tiles at {ratio} positive:negative; pre-training "
        f"run {run_id}. " + LOAD.format(name=name) + " " + FIND_EVALUATIONS.format(name=name),
    )


def external(cfg: PretrainConfig, preset_name: str, run_id: str, source: str, baseline_for: str):
    """The registration of a baseline backbone from the weights file `source`: cyto-external-<backbone>, alias
    external; tagged with the methods it is the baseline of, so two baselines never merge when runs are grouped."""
    name = names.registered_model(names.EXTERNAL, cfg.backbone)
    label = names.external_label(cfg.backbone, source)
    return tracking.Registration(
        model_name=name,
        alias=names.EXTERNAL,
        logged_name=names.logged_model_name(label),
        step=0,
        tags=version_tags(cfg, preset_name, run_id, source=source, baseline_for=baseline_for),
        model_description=f"Baseline {cfg.backbone} backbones from weights files (not pre-trained by cyto_ssrl: "
        "ImageNet, CONCH, a random initialisation ...), registered to be evaluated like the pre-trained ones. The "
        "alias `external` points at the newest.",
        version_description=f"{label}: {cfg.backbone} with the weights of {source}, the baseline of {baseline_for}. "
        + LOAD.format(name=name)
        + " "
        + FIND_EVALUATIONS.format(name=name),
    )


def register(backbone: torch.nn.Module, registration: tracking.Registration, img_size: int) -> str:
    """Register the backbone (logged into the active run) and tag the run with its model URI, what the study's
    downstream cells read; returns the URI `models:/<name>/<version>`."""
    example = torch.zeros(2, 3, img_size, img_size)
    version = tracking.register_backbone(backbone.eval(), registration, example)
    uri = f"models:/{registration.model_name}/{version}"
    tracking.set_tags({"model_uri": uri})
    return uri
