"""How settings are made: every stage has a typed dataclass and a dict of named presets beside its code
(`data/config.py`, `methods/config.py`, `downstream/config.py`, `study/presets.py`); `preset(PRESETS, name,
**overrides)` returns a copy with the overrides applied, so an entry point is `cfg = preset(TILE_PRESETS, name,
seed=seed)`, and `flatten` turns one into MLflow params.
"""

from __future__ import annotations

import copy
import dataclasses

from cyto_ssrl.errors import CytoError


def preset(presets: dict, name: str, **overrides):
    """A copy of `presets[name]` with the non-None overrides applied; unknown names are a one-line error."""
    if name not in presets:
        raise CytoError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    cfg = copy.deepcopy(presets[name])
    fields = {f.name for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            raise CytoError(f"{type(cfg).__name__} has no setting {key!r}")
        setattr(cfg, key, value)
    return cfg


def flatten(cfg, prefix: str = "") -> dict[str, object]:
    """Dataclass to a flat dict of MLflow params (nested dataclasses become dotted keys)."""
    flat: dict[str, object] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat
