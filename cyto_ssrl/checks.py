"""The checks of user input that several entry points share, each a one-line CytoError naming the problem."""

from __future__ import annotations

from cyto_ssrl.errors import CytoError


def one_of(what: str, value: str, choices) -> str:
    """`value` if it is one of `choices`, else 'unknown <what> ...; choose one of ...'."""
    if value not in choices:
        raise CytoError(f"unknown {what} {value!r}; choose one of {'|'.join(choices)}")
    return value


def at_least(name: str, value: int, low: int) -> int:
    if value < low:
        raise CytoError(f"{name} must be at least {low}, got {value}")
    return value
