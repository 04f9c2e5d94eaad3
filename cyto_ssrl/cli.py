"""Shared bits of the thin entry-point CLIs: one-line errors and parsing of compact parameter strings."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import math
import os
import sys

from cyto_ssrl.data.config import PAPER_PARTITIONS
from cyto_ssrl.errors import CytoError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "CYTO_SSRL_DEBUG"  # =1: the same, where the command line is not yours (`mlflow run`)


def main(run) -> None:
    """Call an entry point's `run()`; a CytoError becomes one line on stderr and exit status 2 (with --debug or
    CYTO_SSRL_DEBUG=1, it is raised with its traceback instead)."""
    debug = DEBUG_FLAG in sys.argv or os.environ.get(DEBUG_ENV) == "1"
    sys.argv = [arg for arg in sys.argv if arg != DEBUG_FLAG]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per file of every checkpoint
    try:
        run()
    except CytoError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a full disk is the user's to fix, in one line; every file it hit was left as it was
        if exc.errno != errno.ENOSPC or debug:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on device{where}: free some, or choose another output folder", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # the tracking server gone for longer than MLflow's retries: one line, not a traceback
        from cyto_ssrl.tracking import lost_server

        message = lost_server(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
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
            raise CytoError(
                f"partition {name!r} is not one of {', '.join(PAPER_PARTITIONS)} "
                f"(write e.g. ssrl=0.5,downstream=0.3,evaluation=0.2)"
            )
        try:
            shares[name] = float(value)
        except ValueError:
            raise CytoError(f"partition share {item!r} is not a number (write e.g. evaluation=0.2)") from None
    return shares


def parse_balance(text: str | None) -> tuple[str, ...] | None:
    """'downstream,evaluation': the partitions drawn 1:1 positive:negative; 'none': none (every partition keeps the
    collection's prevalence); 'preset' or '' keeps the preset's (downstream and evaluation). Never ssrl: pools need
    all of it."""
    if text is None or text.strip() in ("", "preset"):
        return None
    if text.strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    for name in names or ("",):
        if name not in PAPER_PARTITIONS:
            raise CytoError(
                f"balance: partition {name!r} is not one of {', '.join(PAPER_PARTITIONS)} "
                f"(write e.g. downstream,evaluation, or none)"
            )
    from cyto_ssrl.data.split import check_balance

    check_balance(names)
    return names


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


# --- each entry point's parameters, declared once -----------------------------------------------------------------
# An entry point declares its parameters as one dataclass of `param(...)` fields; `parse_params` builds its argparse
# CLI from them, and tests/test_project.py checks that MLproject declares the same names, defaults and command.

REQUIRED = object()  # a parameter without a default (MLproject declares none)


def param(default, help: str = "", unset: bool = False):
    """One entry-point parameter: its default as MLproject writes it, and its help. With `unset`, the default is
    a word that says what happens when the parameter is not given ('preset': the preset's value, 'lineage': the
    model's ...); the entry point then gets None, as it does for '' and 'none'."""
    default = None if default is REQUIRED else default
    return dataclasses.field(default=default, metadata={"help": help, "unset": unset, "required": default is None})


def boolean(text: str) -> bool:
    """'true'/'false' (MLflow passes every parameter as text); an argparse type."""
    if str(text).lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return str(text).lower() == "true"


TYPES = {"str": str, "int": integer, "float": float, "bool": boolean}


def _kind(f: dataclasses.Field) -> str:
    """'str', 'int', 'float' or 'bool', whether or not the module postpones its annotations."""
    return f.type if isinstance(f.type, str) else f.type.__name__


class Parser(argparse.ArgumentParser):
    """argparse, whose complaint about an argument is a CytoError: one line, like every other bad input."""

    def error(self, message: str):
        raise CytoError(f"{message} (see --help)")


def parse_params(params_type, description: str, argv: list[str] | None = None):
    """The entry point's parameters from the command line, as an instance of its dataclass `params_type`."""
    parser = Parser(description=description)
    fields = dataclasses.fields(params_type)
    for f in fields:
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=str if f.metadata["unset"] else TYPES[_kind(f)],
            required=f.metadata["required"],
            default=f.default,
            help=_help(f),
        )
    args = parser.parse_args(argv)
    values = {}
    for f in fields:
        value = getattr(args, f.name)
        if f.metadata["unset"]:
            value = None if value in (f.default, "", "none", "None") else _converted(parser, f, value)
        values[f.name] = value
    return params_type(**values)


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
    return text.replace("%", "%%")  # argparse formats help with %


def _converted(parser: argparse.ArgumentParser, f: dataclasses.Field, value: str):
    try:
        return TYPES[_kind(f)](value)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --{f.name.replace('_', '-')}: {exc}")
    except ValueError:
        parser.error(f"argument --{f.name.replace('_', '-')}: {value!r} is not a number")


def mlproject_entry(params_type, module: str) -> dict:
    """What MLproject must declare for an entry point: its parameters (name -> type and default) and command."""
    declared = {}
    for f in dataclasses.fields(params_type):
        kind = "string" if f.metadata["unset"] or _kind(f) in ("str", "bool") else "float"
        declared[f.name] = {"type": kind} if f.metadata["required"] else {"type": kind, "default": f.default}
    options = " ".join(f"--{name.replace('_', '-')} {{{name}}}" for name in declared)
    return {"parameters": declared, "command": f"python -m {module} {options}"}
