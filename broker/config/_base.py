"""What every ``broker.toml`` section shares: strict keys, and the validators several use."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _url_parts(value: str) -> tuple[SplitResult, int | None]:
    """``value`` split, and its port (None: none given, -1: not a valid port)."""
    parts = urlsplit(value)
    try:
        return parts, parts.port
    except ValueError:
        return parts, -1


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _duration_text(value: str, *, at_most: str | None = None, at_least: str | None = None
                   ) -> str:
    from broker.domain.durations import DurationError, parse_duration

    try:
        parsed = parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    if at_most is not None and parsed > parse_duration(at_most):
        raise ValueError(f"{value!r} is longer than the most allowed, {at_most}")
    if at_least is not None and parsed < parse_duration(at_least):
        raise ValueError(f"{value!r} is shorter than the least allowed, {at_least}")
    return value


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
