"""Fixtures of the method tests: one thread, fixed seeds, and 16 real cell crops."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Other tests may share the 2 cores; two OpenMP threads then stall on each other (runs here took 2-3x longer
    # under load), where one thread only slows down by the share it loses.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def cells(shared_data) -> list[Image.Image]:
    """16 real cell crops, 8 per data set, spread over their classes (read in place, never copied)."""
    herlev = sorted((shared_data / "herlev" / "train").glob("*/*.BMP"))
    sipakmed = sorted((shared_data / "sipakmed").glob("im_*/*.bmp"))
    assert len(herlev) >= 8 and len(sipakmed) >= 8, f"Herlev and SIPaKMeD cell images expected under {shared_data}"
    chosen = herlev[:: len(herlev) // 8][:8] + sipakmed[:: len(sipakmed) // 8][:8]
    return [Image.open(path).convert("RGB") for path in chosen]
