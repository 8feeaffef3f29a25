"""Wakes at the next deadline (a grant starting or ending, a warning falling due), not on a
polling tick, and re-plans when told something changed."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog

from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.grants import next_deadline, pairs_with_an_open_grant, refresh_states
from broker.services.requests import expire_pending

WARN_MINUTES = (5, 1)
WINDOW_CLOSED = "your access window closed"
MAX_SLEEP = timedelta(minutes=10)
log = structlog.get_logger("broker.scheduler")


class Scheduler:
    def __init__(self, ctx: Context, sessions: LiveSessions) -> None:
        self.ctx, self.sessions = ctx, sessions
        self._wake = asyncio.Event()

    def replan(self) -> None:
        """Something changed (a grant, a session): compute the next deadline again."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                deadline = await self.tick()
            except Exception as exc:  # keep cutting sessions even if one round failed
                log.error("scheduler round failed", error=str(exc))
                deadline = self.ctx.now() + timedelta(seconds=1)
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

    async def _cut_ended_windows(self) -> None:
        """Sessions whose window has ended go first, before the bookkeeping below (an audit
        row per grant, slow when many grants end at once): those with no other grant open
        now are cut on one query; any others get the full per-session check."""
        now = self.ctx.now()
        due = [s for s in self.sessions if s.ends_at <= now]
        if not due:
            return
        still_open = await pairs_with_an_open_grant(
            self.ctx, {(s.technician, s.device) for s in due})
        closed = [s for s in due if (s.technician, s.device) not in still_open]
        await asyncio.gather(*(s.terminate(WINDOW_CLOSED) for s in closed),
                             return_exceptions=True)
        await self.sessions.recheck(due_by=now)

    async def tick(self) -> datetime:
        """One round: move states on, cut what must end, warn what must be warned.
        Returns when the next round is due."""
        await self._cut_ended_windows()
        changes = await refresh_states(self.ctx)
        await expire_pending(self.ctx)
        if changes:
            await self.sessions.recheck()
        now = self.ctx.now()
        for session, minutes in self.sessions.warnings_due(now, WARN_MINUTES):
            await session.warn(
                f"your access window closes in {minutes} minute{'s' if minutes > 1 else ''}"
                f" (at {session.ends_at:%H:%M:%S} UTC)")
        candidates = [now + MAX_SLEEP, await next_deadline(self.ctx),
                      self.sessions.next_warning(WARN_MINUTES)]
        return min(c for c in candidates if c is not None)
