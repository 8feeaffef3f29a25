"""Time, injected. Production uses :class:`SystemClock`; tests use ``broker.testing.FakeClock``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol

CLOCK_SLICE = 1.0  # seconds


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    async def sleep_until(self, deadline: datetime) -> None:
        """Return at ``deadline`` (or soon after); cancellable."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime) -> None:
        # Sleep in slices of at most a second so that a wall-clock jump forward (NTP step,
        # VM resume) ends what should have ended within a second, not after the interval.
        while (remaining := (deadline - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(remaining, CLOCK_SLICE))
