"""Durations as people write them in the CLI and in policies: ``45s``, ``90m``, ``2h``, ``1d``,
compounds such as ``2h30m`` or ``1d12h``, and decimals such as ``1.5h``."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = r"(\d{1,7}(?:\.\d{1,3})?)\s*([dhms])"
_PATTERN = re.compile(rf"^\s*(?:{_PART}\s*)+\Z", re.ASCII)
_PARTS = re.compile(_PART, re.ASCII)
_EXAMPLES = "45s, 90m, 2h, 2h30m, 1.5h or 1d"


class DurationError(ValueError):
    """A duration string that is not ``<number><s|m|h|d>``, possibly compound."""


def parse_duration(text: str) -> timedelta:
    """Parse ``45s``, ``90m``, ``2h``, ``1d``, ``2h30m`` or ``1.5h``; raise
    :class:`DurationError` otherwise. Units go from the largest to the smallest, each once;
    the total is a whole number of seconds."""
    if not isinstance(text, str) or _PATTERN.match(text) is None:
        raise DurationError(f"{text!r} is not a duration (write it like {_EXAMPLES})")
    parts = _PARTS.findall(text)
    units = [unit for _, unit in parts]
    order = list(_UNITS)
    if len(set(units)) != len(units) or units != sorted(units, key=order.index):
        raise DurationError(f"{text!r} is not a duration: write each unit once, largest"
                            " first (like 1d12h or 2h30m)")
    seconds = sum((Decimal(number) * _UNITS[unit] for number, unit in parts), Decimal(0))
    if seconds != seconds.to_integral_value():
        raise DurationError(f"{text!r} is not a whole number of seconds")
    if seconds == 0:
        raise DurationError(f"{text!r} is not a duration: it must be longer than zero")
    return timedelta(seconds=int(seconds))


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of ``delta`` in the same notation (``5400s`` -> ``90m``,
    ``9000s`` -> ``2h30m``)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return f"{seconds}s"
    whole = next((f"{seconds // size}{unit}" for unit, size in _UNITS.items()
                  if seconds % size == 0), f"{seconds}s")
    parts, rest = [], seconds
    for unit, size in _UNITS.items():
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    compound = "".join(parts)
    return whole if len(whole) <= len(compound) else compound
