"""Shared bits of the thin entry-point CLIs: one-line errors and parsing of compact parameter strings."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from cyto_ssrl.config import PAPER_PARTITIONS
from cyto_ssrl.errors import CytoError


def main(run) -> None:
    """Call an entry point's `run()`; a CytoError becomes one line on stderr and exit status 2."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    try:
        run()
    except CytoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def optional(text: str | None) -> str | None:
    """MLflow passes unset string parameters as ''; treat them as not given."""
    return text if text not in (None, "", "none", "None") else None


def parse_mpp(text: str | None) -> tuple[float | None, dict[str, float]]:
    """'0.25' (every slide without metadata) or 'slideA=0.25,slideB=0.5' (per slide), or both mixed."""
    default, per_slide = None, {}
    for item in filter(None, (optional(text) or "").split(",")):
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise CytoError(f"mpp {item!r} is not a number of um/px (write 0.25 or slide=0.25)") from None
        if number <= 0:
            raise CytoError(f"mpp {item!r} must be positive")
        if name:
            per_slide[name.strip()] = number
        else:
            default = number
    return default, per_slide


def parse_partitions(text: str | None) -> dict[str, float] | None:
    """'ssrl=0.5,downstream=0.3,evaluation=0.2': shares of the tiles (any scale); '' keeps the preset's (the
    paper's 120,000 : 40,000 : 8,000, which leaves a small cell collection a handful of evaluation cells)."""
    if not optional(text):
        return None
    shares = {}
    for item in text.split(","):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in PAPER_PARTITIONS:
            raise CytoError(f"partition {name!r} is not one of {', '.join(PAPER_PARTITIONS)} "
                            f"(write e.g. ssrl=0.5,downstream=0.3,evaluation=0.2)")  # fmt: skip
        try:
            shares[name] = float(value)
        except ValueError:
            raise CytoError(f"partition share {item!r} is not a number (write e.g. evaluation=0.2)") from None
    return shares


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'1376x1020' -> (1376, 1020)."""
    if not optional(text):
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CytoError(f"image size {text!r} is not WIDTHxHEIGHT (e.g. 1376x1020)") from None
    return width, height


def integer(text: str) -> int:
    """MLflow's numeric parameters are floats ('400.0'); accept those for whole-number options.

    An argparse type: argparse prefixes the message with the option it was given for.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def optional_integer(text: str) -> int | None:
    """A whole number, or None where MLflow passed an unset parameter ('')."""
    return integer(text) if optional(text) else None
