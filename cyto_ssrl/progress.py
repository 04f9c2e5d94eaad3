"""One progress bar at a time: a stage's own bars (tiling, training) show when it runs alone and stay off inside a
study, whose bar counts cells. tqdm reads its TQDM_DISABLE switch once, at import; these read it at each bar."""

from __future__ import annotations

import contextlib
import os

from tqdm import tqdm


def bars_off() -> bool:
    return os.environ.get("TQDM_DISABLE", "") not in ("", "0")


def progress_bar(main_process: bool = True, **options) -> tqdm:
    """A tqdm bar, off inside a study (quiet_bars) and on every process but the main one."""
    return tqdm(disable=bars_off() or not main_process, **options)


@contextlib.contextmanager
def quiet_bars():
    """Within the block, stages' bars are off, in this process and in the processes it starts."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous
