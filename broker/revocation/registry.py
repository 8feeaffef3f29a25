"""Live sessions on this node, so that expiry and revocation can reach them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from broker.aio import within

log = structlog.get_logger("broker.revocation")
RECHECK_TIMEOUT = 5.0  # seconds: a database that does not answer counts as unreachable
# Re-checks in flight at once. Fewer than the database pool's connections (SQLAlchemy's
# default: 5 + 10 overflow), so that re-checking a thousand live sessions leaves room for the
# database watchdog's probe and for new logins (bench/sessions.py: unbounded, one resync of
# 1,000 sessions queued the probe past its timeout, and the outage that declared cut them).
RECHECK_CONCURRENCY = 8


class LiveSession(Protocol):
    """What the registry needs of a session (implemented by the SSH connection)."""

    @property
    def technician(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def ends_at(self) -> datetime: ...

    async def still_allowed(self) -> str | None:
        """None while the session may go on, else the reason it must end."""

    async def warn(self, text: str) -> None: ...

    async def terminate(self, reason: str) -> None: ...


class LiveSessions:
    def __init__(self, fail_closed_after: float = 15.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        # session -> the warning lead times (minutes) it has been given
        self._warned: dict[LiveSession, set[int]] = {}
        # session -> when (monotonic) its grant was last confirmed
        self._confirmed: dict[LiveSession, float] = {}
        # a session within its grant survives a check that cannot be made this long
        self.fail_closed_after = fail_closed_after
        self._now = now

    def add(self, session: LiveSession) -> None:
        self._warned.setdefault(session, set())
        self._confirmed.setdefault(session, time.monotonic())

    def remove(self, session: LiveSession) -> None:
        self._warned.pop(session, None)
        self._confirmed.pop(session, None)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._warned))

    def __len__(self) -> int:
        return len(self._warned)

    async def recheck(self, due_by: datetime | None = None) -> int:
        """Ask every live session (or only those whose window ended by ``due_by``) whether
        it may go on, and end each that may not as soon as its own answer is in."""
        sessions = [s for s in self if due_by is None or s.ends_at <= due_by]
        limit = asyncio.Semaphore(RECHECK_CONCURRENCY)
        ended = await asyncio.gather(*(self._recheck_one(s, limit) for s in sessions))
        return sum(ended)

    async def expire_unconfirmed(self, error: str) -> int:
        """The database is known to be away: without asking it (a thousand checks that
        cannot answer would only queue up behind each other), end each session whose window
        has ended or whose grant has gone unconfirmed for fail_closed_after."""
        ended = 0
        for session in self:
            verdict = self._unconfirmed_verdict(session, error, quiet=True)  # the watchdog
            if verdict is not None:  # has said the database is away; each cut is logged
                await self._end(session, verdict)
                ended += 1
        return ended

    def _unconfirmed_verdict(self, session: LiveSession, error: str, quiet: bool = False
                             ) -> str | None:
        """Why a session whose grant cannot be checked must end now, or None (it goes on)."""
        unconfirmed = time.monotonic() - self._confirmed.get(session, 0.0)
        in_window = self._in_window(session)
        if in_window and unconfirmed < self.fail_closed_after:
            if not quiet:
                log.warning("recheck failed; the session is within its grant and goes on"
                            " for now", technician=session.technician,
                            device=session.device, unconfirmed=round(unconfirmed, 1),
                            error=error)
            return None
        log.error("recheck failed; ending session to fail closed",
                  technician=session.technician, device=session.device, error=error)
        return (f"the broker could not confirm the grant for {unconfirmed:.0f} s"
                if in_window else "the broker could not confirm the grant")

    async def _recheck_one(self, session: LiveSession, limit: asyncio.Semaphore) -> bool:
        async with limit:
            try:
                verdict = await within(RECHECK_TIMEOUT, session.still_allowed())
            except Exception as exc:  # the database away (refused, or no answer at all)
                verdict = self._unconfirmed_verdict(session, str(exc))
                if verdict is None:
                    return False
            else:
                if session in self._confirmed:
                    self._confirmed[session] = time.monotonic()
        if verdict is None:
            return False
        await self._end(session, verdict)
        return True

    async def _end(self, session: LiveSession, verdict: str) -> None:
        try:
            await session.terminate(verdict)
        except Exception as exc:
            log.error("ending a session failed", technician=session.technician,
                      device=session.device, error=str(exc))

    def confirm_all(self) -> None:
        """The database answers (so revocation can reach every session): each counts as
        confirmed now."""
        moment = time.monotonic()
        for session in self._confirmed:
            self._confirmed[session] = moment

    def _in_window(self, session: LiveSession) -> bool:
        """Whether the session is still inside its grant's window, as last known."""
        ends = session.ends_at
        if ends.tzinfo is None:
            ends = ends.replace(tzinfo=UTC)
        return ends > self._now()

    def warnings_due(self, now: datetime, lead_minutes: tuple[int, ...]
                     ) -> list[tuple[LiveSession, int]]:
        due = []
        for session in self:
            for minutes in lead_minutes:
                remaining = (session.ends_at - now).total_seconds()
                if remaining <= minutes * 60 and minutes not in self._warned[session]:
                    self._warned[session].add(minutes)
                    if remaining > 0 and remaining > (minutes - 1) * 60 - 30:
                        due.append((session, minutes))
        return due

    def next_warning(self, lead_minutes: tuple[int, ...]) -> datetime | None:
        moments = [s.ends_at - timedelta(minutes=m) for s in self for m in lead_minutes
                   if m not in self._warned.get(s, set())]
        return min(moments, default=None)
