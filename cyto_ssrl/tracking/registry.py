"""The model registry: a trained backbone logged and registered with its tags, alias and descriptions (never a
version without them), and registered versions found and loaded."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import mlflow
import torch
from mlflow import MlflowClient
from tqdm import tqdm

from cyto_ssrl.errors import CytoError
from cyto_ssrl.tracking.store import configure, text_values


def pip_requirements() -> list[str]:
    """What a logged backbone needs to load: these packages at the versions that logged it."""
    import safetensors
    import timm
    import torchvision

    modules = {"torch": torch, "torchvision": torchvision, "timm": timm, "mlflow": mlflow, "safetensors": safetensors}
    # From the modules, not the distributions: mlflow-skinny and the full mlflow are both `mlflow` to import.
    return [f"{name}=={module.__version__.split('+')[0]}" for name, module in modules.items()]


@contextlib.contextmanager
def _logger_level(name: str, level: int):
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass
class Registration:
    """How a backbone goes into the registry: its registered model and alias, the logged model's name and the
    epoch whose metrics it carries, the version's tags and the descriptions the registry shows."""

    model_name: str
    alias: str
    logged_name: str  # letters, digits, '-', '_' (MLflow refuses '/', ':' and '.' in logged model names)
    step: int  # the last epoch: a logged model shows the run's metrics at this step
    tags: dict
    model_description: str
    version_description: str  # may hold {version}: filled in once the registry numbered the version


def _version_of_run(model_name: str, run_id: str, tags) -> str | None:
    """The whole version a run already registered under `model_name`, if any. One a killed job left without its
    tags is deleted, to be registered again."""
    client = MlflowClient()
    for version in client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'"):
        if set(tags) <= set(version.tags):
            return version.version
        client.delete_model_version(model_name, version.version)
    return None


def register_backbone(backbone, registration: Registration, input_example) -> str:
    """Log the encoder into the active run and register it as a version with its tags, alias and descriptions;
    returns the version number.

    Registered last, after training finished. A version is never left without its tags or alias: if either
    fails, the version is deleted again.
    """
    from mlflow.models import infer_signature

    earlier = _version_of_run(registration.model_name, mlflow.active_run().info.run_id, registration.tags)
    if earlier:  # a job started again (requeued, retried) after it registered: the run keeps its one version
        return earlier
    with torch.no_grad():
        output = backbone(input_example).numpy()
    signature = infer_signature(input_example.numpy(), output)
    # Pickle, not pt2: downstream fine-tunes the backbone, and a pt2 export cannot go back to .train(). MLflow
    # warns about pickle on every call; the choice is deliberate, so that warning is silenced here.
    reg = registration
    with _logger_level("mlflow.pytorch", logging.ERROR):
        info = mlflow.pytorch.log_model(
            backbone,
            name=reg.logged_name,
            serialization_format="pickle",
            signature=signature,
            input_example=input_example.numpy(),
            pip_requirements=pip_requirements(),
            step=reg.step,
        )
    with _mlflow_events_silenced():
        version = mlflow.register_model(info.model_uri, reg.model_name, tags=text_values(reg.tags))
    client = MlflowClient()
    try:
        missing = set(reg.tags) - set(client.get_model_version(reg.model_name, version.version).tags)
        if missing:
            raise RuntimeError(f"tags {sorted(missing)} were not stored")
        client.set_registered_model_alias(reg.model_name, reg.alias, version.version)
        client.update_registered_model(reg.model_name, description=reg.model_description)
        client.update_model_version(
            reg.model_name, version.version, description=reg.version_description.format(version=version.version)
        )
    except BaseException:
        client.delete_model_version(reg.model_name, version.version)
        raise
    tqdm.write(f"registered models:/{reg.model_name}/{version.version} as models:/{reg.model_name}@{reg.alias}")
    return version.version


@contextlib.contextmanager
def _mlflow_events_silenced():
    """MLflow prints two lines of its own per registration straight to stderr, through the study's progress bar;
    register_backbone writes one line with the URIs instead, through tqdm."""
    from mlflow.utils import logging_utils

    previous = logging_utils.MLFLOW_LOGGING_STREAM.enabled
    logging_utils.disable_logging()
    try:
        yield
    finally:
        logging_utils.MLFLOW_LOGGING_STREAM.enabled = previous


def logged_model_id(version) -> str:
    """The logged model behind a registry version (MLflow 3: its source is `models:/<model id>`)."""
    return version.source.removeprefix("models:/")


def model_version(model_uri: str):
    """The registry version `models:/<name>/<version>` or `models:/<name>@<alias>` names; a one-line error if none."""
    configure()
    ref = model_uri.strip().removeprefix("models:/")
    name, by_alias, alias = ref.partition("@")
    if not by_alias:
        name, _, number = ref.rpartition("/")
    if not model_uri.strip().startswith("models:/") or not name or not (alias if by_alias else number.isdigit()):
        raise CytoError(
            f"{model_uri!r} is not a registered model: write models:/<name>/<version> or models:/<name>@<alias>"
        )
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise CytoError(f"no registered model named {name!r} in {mlflow.get_tracking_uri()}") from None
    try:
        return client.get_model_version_by_alias(name, alias) if by_alias else client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException:
        missing = f"alias {alias!r}" if by_alias else f"version {number}"
        raise CytoError(f"registered model {name!r} has no {missing}") from None


def load_registered_model(name: str, version: str) -> torch.nn.Module:
    """A registered PyTorch model by its fixed version (an alias could move to another version mid-study)."""
    configure()
    return mlflow.pytorch.load_model(f"models:/{name}/{version}")
