"""Wakes at the next deadline (a grant starting or ending, a warning falling due), not on a
polling tick, and re-plans when told something changed."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from broker.domain.grants import WARN_MINUTES_BEFORE_END
from broker.errors import BrokerError
from broker.revocation.deadlines import DeadlineLoop
from broker.revocation.registry import LiveSessions
from broker.services.access_session import WINDOW_CLOSED
from broker.services.context import Context
from broker.services.grants import next_deadline, pairs_with_an_open_grant, refresh_states
from broker.services.requests import expire_pending
from broker.services.vendors import lifecycle_round, next_lifecycle_deadline

WARN_MINUTES = WARN_MINUTES_BEFORE_END
MAX_SLEEP = timedelta(minutes=10)


class Scheduler(DeadlineLoop):
    """Moves grants through their states and cuts, warns and expires on time."""

    def __init__(self, ctx: Context, sessions: LiveSessions) -> None:
        super().__init__(ctx)
        self.sessions = sessions

    def session_opened(self, ends_at: datetime) -> None:
        """A session opened that ends at ``ends_at``: a round now if its first warning falls
        before the round planned (a round for every opening would cost every login a pass
        over the grants)."""
        self.replan_by(ends_at - timedelta(minutes=max(WARN_MINUTES)))

    async def _cut_ended_windows(self) -> None:
        """Sessions whose window has ended go first, before the bookkeeping below (an audit
        row per grant, slow when many grants end at once): those with no other grant open
        now are cut on one query; any others get the full per-session check."""
        now = self.ctx.now()
        due = [s for s in self.sessions if s.ends_at <= now]
        if not due:
            return
        try:
            still_open = await pairs_with_an_open_grant(
                self.ctx, {(s.technician, s.device) for s in due})
        except BrokerError:  # no database to ask: a window that ended ends (fail closed)
            still_open = set()
        closed = [s for s in due if (s.technician, s.device) not in still_open]
        await asyncio.gather(*(s.terminate(WINDOW_CLOSED) for s in closed),
                             return_exceptions=True)
        await self.sessions.recheck(due_by=now)

    async def tick(self) -> datetime:
        """One round: move states on, cut what must end, warn what must be warned.
        Returns when the next round is due."""
        await self._cut_ended_windows()
        changes = await refresh_states(self.ctx)
        lifecycle = await lifecycle_round(self.ctx)  # contract ends, expiry, inactivity
        await expire_pending(self.ctx)
        if changes or lifecycle:
            await self.sessions.recheck()
        now = self.ctx.now()
        for session, minutes in self.sessions.warnings_due(now, WARN_MINUTES):
            await session.warn(
                f"your access window closes in {minutes} minute{'s' if minutes > 1 else ''}"
                f" (at {session.ends_at:%H:%M:%S} UTC)")
        candidates = [now + MAX_SLEEP, await next_deadline(self.ctx),
                      await next_lifecycle_deadline(self.ctx),
                      self.sessions.next_warning(WARN_MINUTES)]
        return min(c for c in candidates if c is not None)
