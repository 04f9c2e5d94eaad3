"""Stage 2: unlabeled pre-training pools at a positive:negative ratio 1:r, drawn from the `ssrl` partition.

Labels choose which tiles enter a pool and are kept in the pool manifest for lineage; the pre-training dataset
(`TileImages`) is built from tile paths alone, so no label can reach the SSL model.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

from cyto_ssrl.errors import CytoError

_RATIO = re.compile(r"^\s*1\s*:\s*([0-9][0-9,_]*)\s*$")


def parse_ratio(text: str | int) -> int:
    """'1:100' -> 100. The study's ratios are written positive:negative with one positive."""
    if isinstance(text, int):
        r = text
    else:
        match = _RATIO.match(str(text))
        if not match:
            raise CytoError(f"ratio {text!r} is not written 1:r (positive:negative), e.g. 1:100")
        r = int(match.group(1).replace(",", "").replace("_", ""))
    if r < 1:
        raise CytoError(f"ratio 1:{r} needs at least one negative per positive (r >= 1)")
    return r


def ratio_label(r: int) -> str:
    return f"1:{r}"


def ratio_alias(r: int) -> str:
    """Registry alias of a ratio: 1:100 -> r100."""
    return f"r{r}"


def pool_counts(pool_size: int, r: int) -> tuple[int, int]:
    """(positives, negatives): positives = round(N / (r + 1)), at least one."""
    positives = max(1, round(pool_size / (r + 1)))
    return positives, pool_size - positives


def make_pool(manifest: pd.DataFrame, r: int, pool_size: int, seed: int, allow_smaller: bool = False) -> pd.DataFrame:
    """A seeded pool of `pool_size` ssrl tiles at 1:r; the same inputs give the same pool."""
    if pool_size < 2:
        raise CytoError(f"pool_size {pool_size} is too small: a pool needs at least one positive and one negative")
    ssrl = manifest[manifest["partition"] == "ssrl"]
    if ssrl.empty:
        raise CytoError("the manifest has no tiles in the 'ssrl' partition to build a pool from")
    positives = ssrl[ssrl["label"] == "positive"].sort_values("tile_id")
    negatives = ssrl[ssrl["label"] == "negative"].sort_values("tile_id")
    n_pos, n_neg = pool_counts(pool_size, r)
    if n_pos > len(positives) or n_neg > len(negatives):
        if not allow_smaller:
            raise CytoError(
                f"pool {ratio_label(r)} of {pool_size} tiles needs {n_pos} positive and {n_neg} negative ssrl tiles; "
                f"the manifest has {len(positives)} and {len(negatives)} (allow_smaller_pool keeps the ratio)"
            )
        pool_size = largest_pool(len(positives), len(negatives), r)
        n_pos, n_neg = pool_counts(pool_size, r)
    rng = np.random.default_rng(seed)
    chosen = pd.concat(
        [
            positives.iloc[np.sort(rng.choice(len(positives), n_pos, replace=False))],
            negatives.iloc[np.sort(rng.choice(len(negatives), n_neg, replace=False))],
        ]
    )
    return chosen[["tile_id", "slide_id", "label", "path"]].sort_values("tile_id", ignore_index=True)


def largest_pool(n_positive: int, n_negative: int, r: int) -> int:
    """The largest N whose 1:r counts fit the available tiles."""
    size = min(n_positive * (r + 1) + r // 2, n_positive + n_negative)
    while size >= 2:
        n_pos, n_neg = pool_counts(size, r)
        if n_pos <= n_positive and n_neg <= n_negative:
            return size
        size -= 1
    raise CytoError(f"no pool at 1:{r} fits {n_positive} positive and {n_negative} negative ssrl tiles")


def pool_digest(pool: pd.DataFrame) -> str:
    """Content digest of a pool: its sorted tile ids."""
    return hashlib.sha256("\n".join(sorted(pool["tile_id"])).encode()).hexdigest()[:16]


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise CytoError(f"manifest {path} does not exist")
    return pd.read_parquet(path)


class TileImages(Dataset):
    """Tile images from paths only (no labels), each passed through `transform` (e.g. MultiView)."""

    def __init__(self, paths: list[str], transform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))
