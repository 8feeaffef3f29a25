"""Live sessions on this node, so that expiry and revocation can reach them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Protocol

import structlog

log = structlog.get_logger("broker.revocation")


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
    def __init__(self) -> None:
        # session -> the warning lead times (minutes) it has been given
        self._warned: dict[LiveSession, set[int]] = {}

    def add(self, session: LiveSession) -> None:
        self._warned.setdefault(session, set())

    def remove(self, session: LiveSession) -> None:
        self._warned.pop(session, None)

    def __iter__(self) -> Iterator[LiveSession]:
        return iter(list(self._warned))

    def __len__(self) -> int:
        return len(self._warned)

    async def recheck(self, due_by: datetime | None = None) -> int:
        """Ask every live session (or only those whose window ended by ``due_by``) whether
        it may go on, and end each that may not as soon as its own answer is in."""
        sessions = [s for s in self if due_by is None or s.ends_at <= due_by]
        ended = await asyncio.gather(*(self._recheck_one(s) for s in sessions))
        return sum(ended)

    async def _recheck_one(self, session: LiveSession) -> bool:
        try:
            verdict = await session.still_allowed()
        except Exception as exc:
            log.error("recheck failed; ending session to fail closed",
                      technician=session.technician, device=session.device, error=str(exc))
            verdict = "the broker could not confirm the grant"
        if verdict is None:
            return False
        try:
            await session.terminate(verdict)
        except Exception as exc:
            log.error("ending a session failed", technician=session.technician,
                      device=session.device, error=str(exc))
        return True

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
