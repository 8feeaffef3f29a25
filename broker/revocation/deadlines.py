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

    def replan(self) -> None:
        """Something changed: run a round now instead of at the planned deadline."""
        self._wake.set()

    @abstractmethod
    async def tick(self) -> datetime:
        """One round; returns when the next one is due."""

    async def run(self) -> None:
        while True:
            try:
                deadline = await self.tick()
            except Exception as exc:  # a broken round must not stop the later ones
                log.error("round failed", loop=type(self).__name__, error=str(exc))
                deadline = self.ctx.now() + self.retry_after
            self._wake.clear()
            sleeper = asyncio.ensure_future(self.ctx.clock.sleep_until(deadline))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
