"""Files that readers never see half-written: written under a unique temporary name, then renamed into place."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes the file at a temporary path beside `path`, which then replaces `path` in one rename.

    The temporary name is unique (several processes may write the same file at once: the last rename wins, and
    every reader sees one whole file); a failed or killed write leaves `path` as it was and no temporary behind.
    The file is flushed to disk before the rename, so a crash of the machine leaves the old file or the new one,
    never an empty one under the new name.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        sync(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        if disk_full(path.parent):  # writers such as torch.save say so in their own words, if at all
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def sync(path: Path) -> None:
    with open(path, "rb") as written:
        os.fsync(written.fileno())


def disk_full(folder: Path) -> bool:
    """Less than a block left for this user in `folder`'s file system."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize < 64 * 1024


def save_weights(module, path: str | Path) -> Path:
    """A module's weights as a safetensors file (contiguous tensors, as safetensors wants), written atomically."""
    from safetensors.torch import save_file

    state = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    return write_atomic(path, lambda tmp: save_file(state, tmp))


def write_parquet(df, path: str | Path) -> Path:
    """A table as a Parquet file, written atomically."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))
