"""A loop that runs one round, then sleeps until the deadline the round named, or until it
is told that something changed: the shape of the scheduler and of the rotator."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from datetime import datetime, timedelta

import structlog

from broker.services.context import Context

log = structlog.get_logger("broker.deadlines")


class DeadlineLoop(ABC):
    #: after a failed round, try again this much later
    retry_after: timedelta = timedelta(seconds=1)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._wake = asyncio.Event()
        self._planned: datetime | None = None  # the next round, while waiting for it

    def replan(self) -> None:
        """Something changed: run a round now instead of at the planned deadline."""
        self._wake.set()

    def replan_by(self, moment: datetime) -> None:
        """Something falls due at ``moment``: run a round now, unless one is planned by
        then anyway (or is running, and will see it)."""
        if self._planned is None or moment < self._planned:
            self.replan()

    @abstractmethod
    async def tick(self) -> datetime:
        """One round; returns when the next one is due."""

    async def run(self) -> None:
        while True:
            # cleared before the round: a change made while it runs wakes the next one
            self._wake.clear()
            self._planned = None
            try:
                deadline = await self.tick()
            except Exception as exc:  # a broken round must not stop the later ones
                log.error("round failed", loop=type(self).__name__, error=str(exc))
                deadline = self.ctx.now() + self.retry_after
            self._planned = deadline
            sleeper = asyncio.ensure_future(self.ctx.clock.sleep_until(deadline))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
