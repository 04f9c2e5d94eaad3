"""A study's settings: a named preset or a JSON file of StudyConfig fields, checked before any run starts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from cyto_ssrl import tracking
from cyto_ssrl.checks import at_least, one_of
from cyto_ssrl.config import flatten, preset
from cyto_ssrl.data.config import TILE_PRESETS, CsvAnnotationConfig
from cyto_ssrl.data.pools import parse_ratio
from cyto_ssrl.downstream.budgets import check_budget
from cyto_ssrl.downstream.config import DOWNSTREAM_PRESETS, TRAINED_MODES
from cyto_ssrl.errors import CytoError
from cyto_ssrl.methods import METHODS
from cyto_ssrl.methods.config import PRETRAIN_PRESETS, PretrainConfig, pretrain_preset_name
from cyto_ssrl.study.presets import EXECUTORS, RUNTIME_FIELDS, STUDY_AXES, STUDY_PRESETS, StudyConfig

SOURCES = ("synthetic", "slides", "cells")


def load_config(name: str, **axes) -> StudyConfig:
    """A named preset or a JSON file of StudyConfig fields (over the demo's), with the non-empty `axes` applied."""
    if name in STUDY_PRESETS:
        fields, base = {}, name
    elif name.endswith(".json") and Path(name).is_file():
        fields, base = _json_fields(Path(name)), "demo"
    else:
        raise CytoError(f"unknown study preset {name!r}; choose one of {sorted(STUDY_PRESETS)} or a .json file")
    given = {k: v for k, v in axes.items() if v not in (None, ())}  # the command line's over the file's
    cfg = preset(STUDY_PRESETS, base, **{**fields, **given})
    # JSON gives lists; tuples keep the settings' logged form the same however the study was started.
    lists = {
        f.name: tuple(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if isinstance(getattr(cfg, f.name), list)
    }
    return dataclasses.replace(cfg, **lists)


def _json_fields(path: Path) -> dict:
    """A study's JSON file: one object of StudyConfig fields."""
    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CytoError(f"{path} is not JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise CytoError(f'{path} holds a {type(fields).__name__}, not an object of study settings ({{"ratios": ...}})')
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(StudyConfig)})
    if unknown:
        raise CytoError(f"{path}: unknown setting(s) {unknown}; see StudyConfig in cyto_ssrl/study/presets.py")
    return fields


def settings(cfg: StudyConfig) -> dict[str, str]:
    """The fields every cell of one study must share (the axes may grow), as logged params `cfg.<field>`."""
    return {f"cfg.{k}": str(v) for k, v in flatten(cfg).items() if k not in (*STUDY_AXES, *RUNTIME_FIELDS)}


def pretrain_config(cfg: StudyConfig, method: str) -> tuple[str, PretrainConfig]:
    name = pretrain_preset_name(cfg.pretrain_preset, method)
    return name, preset(PRETRAIN_PRESETS, name, method=method, **cfg.pretrain_overrides)


def external_weights(cfg: StudyConfig) -> dict[str, str]:
    """backbone -> 'random' or a weights file, from `external`: '', 'random', a path, or 'backbone=path,...'."""
    backbones = sorted({pretrain_config(cfg, method)[1].backbone for method in cfg.methods})
    if cfg.external in ("", "random"):
        return {b: cfg.external for b in backbones if cfg.external}
    if "=" not in cfg.external:
        return dict.fromkeys(backbones, cfg.external)
    given = dict(item.split("=", 1) for item in cfg.external.split(","))
    unknown = set(given) - set(backbones)
    if unknown:
        raise CytoError(f"external weights for {sorted(unknown)}, but the study's backbones are {backbones}")
    return given


def tile_overrides(given: dict[str, object]) -> dict[str, object]:
    """The study's tile overrides as TileConfig takes them: its nested CSV settings as their dataclass."""
    if not isinstance(given.get("csv"), dict):
        return dict(given)
    csv = dict(given["csv"])
    if csv.get("image_size") is not None:  # JSON gives a list; the reader compares sizes as tuples
        csv["image_size"] = tuple(csv["image_size"])
    return {**given, "csv": CsvAnnotationConfig(**csv)}


def mode_budgets(cfg: StudyConfig, mode: str) -> tuple[float, ...]:
    """The budgets `mode` is evaluated at: its own in `mode_budgets`, else the study's."""
    return tuple(cfg.mode_budgets.get(mode, cfg.budgets))


def baseline_methods(cfg: StudyConfig, backbone: str) -> list[str]:
    """The study's methods whose backbone is `backbone`: those an external baseline of it is compared with."""
    return [m for m in cfg.methods if pretrain_config(cfg, m)[1].backbone == backbone]


def validate(cfg: StudyConfig, study_id: str, workers: int | None) -> None:
    """Every input the grid depends on, checked before any run starts."""
    if not re.fullmatch(r"[\w.-]+", study_id):
        raise CytoError(f"study id {study_id!r} may hold only letters, digits, '_', '-' and '.'")
    one_of("executor", cfg.executor, EXECUTORS)
    tracking.refuse_password(cfg.tune_storage, "tune_storage")  # before it is logged as a param
    _check_axes(cfg)
    _check_inputs(cfg)
    if workers is not None:
        at_least("workers", workers, 1)
    if cfg.executor == "local" and (workers or 1) > 1:
        raise CytoError(
            f"workers={workers} runs cells at once on an engine: add -P executor=ray (this machine's "
            "cores and GPUs, or a Ray cluster) or -P executor=slurm"
        )
    if cfg.executor != "local" and not tracking.configure().startswith("http"):
        raise CytoError(
            f"executor={cfg.executor} runs cells in other processes and on other machines, which share the "
            "study through a tracking server: start one with `python -m entrypoints.server` and set "
            "MLFLOW_TRACKING_URI=http://HOST:5000"
        )


def _check_axes(cfg: StudyConfig) -> None:
    if not cfg.ratios or not cfg.methods or not cfg.seeds:
        raise CytoError("a study needs at least one ratio, method and seed")
    for ratio in cfg.ratios:
        parse_ratio(ratio)
    for method in cfg.methods:
        one_of("method", method, METHODS)
        pretrain_config(cfg, method)
    for mode in cfg.modes:
        one_of("downstream mode", mode, TRAINED_MODES)
    for mode in cfg.mode_budgets:
        one_of("mode of mode_budgets", mode, TRAINED_MODES)
    for budget in {b for mode in cfg.modes for b in mode_budgets(cfg, mode)}:
        check_budget(budget)
    at_least("resamples", cfg.resamples, 1)
    if cfg.tune_trials < 0:
        raise CytoError(f"tune_trials must be 0 (no tuning) or more, got {cfg.tune_trials}")


def _check_inputs(cfg: StudyConfig) -> None:
    preset(DOWNSTREAM_PRESETS, cfg.downstream_preset)
    if cfg.manifest:
        if not Path(cfg.manifest).is_file():
            raise CytoError(f"tile manifest {cfg.manifest} does not exist")
    else:
        preset(TILE_PRESETS, cfg.tile_preset, **tile_overrides(cfg.tile_overrides))
        one_of("tile source", cfg.source, SOURCES)
        if cfg.source != "synthetic" and not (cfg.input and Path(cfg.input).is_dir()):
            raise CytoError(f"source {cfg.source!r} needs input, a folder of slides or cell crops ({cfg.input} is not)")
    for weights in external_weights(cfg).values():
        if weights != "random" and not Path(weights).is_file():
            raise CytoError(f"external weights {weights} do not exist (nothing is downloaded: give a local file)")


def check_settings(study_id: str, cfg: StudyConfig) -> None:
    """Refuse to continue a study id with other settings: its tables would mix incomparable runs."""
    earlier = tracking.find_runs("study", study=study_id)
    if earlier.empty:
        return
    first = earlier.sort_values("start_time").iloc[0]
    differ = [
        f"{key.removeprefix('cfg.')} was {logged!r}, now {value!r}"
        for key, value in settings(cfg).items()
        if (logged := tracking.param(first, key)) is not None and logged != value
    ]
    if differ:
        raise CytoError(
            f"study {study_id!r} exists with other settings ({'; '.join(differ)}); "
            "choose another study id or the same settings"
        )


def study_dir(cfg: StudyConfig, study_id: str) -> Path:
    return Path(cfg.output).resolve() / study_id
