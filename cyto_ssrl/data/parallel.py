"""Worker processes for stage 1: jobs mapped in order over a few processes, each opening its own slides."""

from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor

import torch

from cyto_ssrl.data.slides import open_slide


def parallel_map(fn, jobs: list, workers: int):
    """fn over jobs in order, in up to `workers` processes (no pool for a single job or worker)."""
    if min(workers, len(jobs)) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), initializer=start_worker) as pool:
        try:
            yield from pool.map(fn, jobs)
        finally:
            pool.shutdown(cancel_futures=True)  # a failed job reports at once, not after every queued job has run


def start_worker() -> None:
    # A forked worker inherits the slides its parent opened for an in-process run; their file offsets would be
    # shared with the parent and every sibling, so each worker opens its own.
    open_cached.cache_clear()
    torch.set_num_threads(1)  # the resampling kernel's: the workers already fill the cores


@functools.lru_cache(maxsize=4)
def open_cached(path: str):
    return open_slide(path)
