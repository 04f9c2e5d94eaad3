"""The study tests' cohort: the small synthetic one tiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def manifest(small_cohort) -> Path:
    return small_cohort
