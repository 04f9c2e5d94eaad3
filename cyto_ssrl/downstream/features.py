"""Labelled tiles of a partition, and features of a frozen backbone cached on disk.

A cache file is keyed by the model version (name, number and the logged model it points to), the partition's tiles
and the preprocessing; the key is stored inside the file and compared on every read, so a cache written for
another version, another manifest or another image size is recomputed, never reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cyto_ssrl.data.pools import pool_digest
from cyto_ssrl.data.transforms import eval_transform
from cyto_ssrl.errors import CytoError
from cyto_ssrl.files import write_atomic

LABELS = {"negative": 0, "positive": 1}

log = logging.getLogger(__name__)


def labelled_tiles(manifest: pd.DataFrame, partition: str) -> pd.DataFrame:
    """The partition's positive and negative tiles (ambiguous and unlabelled ones dropped), sorted by tile id.

    Column y is 1 for positive, 0 for negative; the index runs 0..n-1, the row of each tile's features.
    """
    tiles = manifest[(manifest["partition"] == partition) & manifest["label"].isin(list(LABELS))]
    if tiles.empty:
        raise CytoError(f"the manifest has no positive or negative tiles in the {partition!r} partition")
    tiles = tiles.sort_values("tile_id", ignore_index=True)
    return tiles.assign(y=tiles["label"].map(LABELS).astype(int))


class LabelledImages(Dataset):
    """(image tensor, label) pairs of labelled tiles, each image passed through `transform`."""

    def __init__(self, tiles: pd.DataFrame, transform):
        self.paths = list(tiles["path"])
        self.labels = torch.tensor(tiles["y"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def eval_loader(tiles: pd.DataFrame, img_size: int, batch_size: int, num_workers: int) -> DataLoader:
    """The tiles in order, preprocessed deterministically (eval_transform)."""
    return DataLoader(
        LabelledImages(tiles, eval_transform(img_size)), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )


@torch.no_grad()
def encode(
    backbone: torch.nn.Module, tiles: pd.DataFrame, img_size: int, batch_size: int = 64, num_workers: int = 0
) -> torch.Tensor:
    """(n_tiles, n_features) features of the frozen backbone, in the order of `tiles`, on the CPU (the probe trains
    there; the cache is a CPU tensor). The backbone encodes on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.eval().to(device)
    loader = eval_loader(tiles, img_size, batch_size, num_workers)
    return torch.cat([backbone(images.to(device)).float().cpu() for images, _ in loader])


def feature_key(version, partition: str, tiles: pd.DataFrame, img_size: int) -> dict[str, str]:
    """What the features depend on: the model version, the partition's tiles and the preprocessing."""
    return {
        "model_name": version.name,
        "model_version": str(version.version),
        # The logged model the version points to: a recreated store can reuse a name and number for other weights.
        "model_source": version.source,
        "partition": partition,
        "tiles": pool_digest(tiles),
        "preprocessing": f"eval_transform_{img_size}px",
    }


def cache_path(feature_dir: str | Path, key: dict[str, str]) -> Path:
    name = f"{key['model_name']}_v{key['model_version']}_{key['partition']}_{key['preprocessing']}.pt"
    return Path(feature_dir) / name


def cached_features(
    key: dict[str, str], compute: Callable[[], torch.Tensor], feature_dir: str | Path | None
) -> torch.Tensor:
    """Features under `key`: read from the cache when the file holds this key, else computed and written.

    `feature_dir=None` computes every time and writes nothing.
    """
    if feature_dir is None:
        return compute()
    path = cache_path(feature_dir, key)
    if path.exists():
        stored = _read_cache(path)
        if stored["key"] == key:
            return stored["features"]
        log.info("feature cache %s was written for %s; recomputing", path, stored["key"])
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save({"key": key, "features": features}, tmp))
    return features


def _read_cache(path: Path) -> dict:
    """A cache file as written. Ours are written whole (write_atomic), so a broken one was damaged afterwards: say
    so, rather than silently overwrite what may be a sign of a failing disk."""
    try:
        stored = torch.load(path, weights_only=True)
        stored["key"], stored["features"]  # noqa: B018 (a file without them is broken too)
    except Exception as exc:  # torch raises a different type for each way a file can be broken
        raise CytoError(
            f"feature cache {path} cannot be read ({type(exc).__name__}); delete it and it is computed again"
        ) from None
    return stored
