"""Durations as people write them in the CLI and in policies: ``45s``, ``90m``, ``2h``, ``1d``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d{1,7})\s*([smhd])\s*\Z", re.ASCII)


class DurationError(ValueError):
    """A duration string that is not ``<number><s|m|h|d>``."""


def parse_duration(text: str) -> timedelta:
    """Parse ``45s``, ``90m``, ``2h`` or ``1d``; raise :class:`DurationError` otherwise."""
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise DurationError(f"{text!r} is not a duration (write it like 45s, 90m, 2h or 1d)")
    value = int(match.group(1))
    if value == 0:
        raise DurationError(f"{text!r} is not a duration: it must be longer than zero")
    return timedelta(seconds=value * _UNITS[match.group(2)])


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of ``delta`` in the same notation (``5400s`` -> ``90m``)."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
