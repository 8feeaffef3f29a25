"""Replaying a terminal recording with its original timing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from .reader import Cast

Sleep = Callable[[float], Awaitable[object]]


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def frames(
    cast: Cast, speed: float = 1.0, max_idle: float | None = 2.0
) -> Iterator[tuple[float, str]]:
    """``(delay before, text)`` for each output event: gaps capped at ``max_idle`` (recorded
    seconds), then divided by ``speed``."""
    if speed <= 0:
        raise ValueError(f"speed must be positive, not {speed!r}")
    previous = 0.0
    for t, code, data in cast.events:
        if code != "o":
            continue
        gap = max(t - previous, 0.0)
        previous = t
        if max_idle is not None:
            gap = min(gap, max_idle)
        yield gap / speed, data


async def replay(
    cast: Cast,
    out: Sink,
    speed: float = 1.0,
    max_idle: float | None = 2.0,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Write the output events of ``cast`` to ``out`` as they were shown to the technician."""
    flush = getattr(out, "flush", None)
    for delay, text in frames(cast, speed, max_idle):
        if delay > 0:
            await sleep(delay)
        out.write(text.encode("utf-8"))
        if flush is not None:
            flush()
