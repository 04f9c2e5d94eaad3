"""Files that readers never see half-written: written under a unique temporary name, then renamed into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the file at a temporary path beside `path`, which then replaces `path` in one rename.

    The temporary name is unique (several processes may write the same file at once: the last rename wins, and
    every reader sees one whole file); a failed or killed write leaves `path` as it was and no temporary behind.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_weights(module, path: str | Path) -> Path:
    """A module's weights as a safetensors file (contiguous tensors, as safetensors wants), written atomically."""
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    return write_atomic(path, lambda tmp: save_file(state, tmp))


def write_parquet(df, path: str | Path) -> Path:
    """A table as a Parquet file, written atomically."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))
