"""A re-check that cannot be made (the database is away) keeps a session within its grant
for [broker] fail_closed_after from when the database was last known to answer, then cuts
it; a session whose window has ended is cut at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from broker.revocation.registry import RECHECK_CONCURRENCY, LiveSessions

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Session:
    technician = "tech"
    device = "dev"

    def __init__(self, ends_at: datetime) -> None:
        self.ends_at = ends_at
        self.cut: str | None = None

    async def still_allowed(self) -> str | None:
        raise OSError(111, "Connect call failed")

    async def warn(self, text: str) -> None:
        return None

    async def terminate(self, reason: str) -> None:
        self.cut = reason


async def test_within_the_grant_a_failed_check_waits_out_the_grace() -> None:
    sessions = LiveSessions(fail_closed_after=0.2, now=lambda: NOW)
    live = Session(NOW + timedelta(hours=1))
    sessions.add(live)
    assert await sessions.recheck() == 0 and live.cut is None
    sessions._confirmed[live] -= 1.0  # the database has been away for a second
    assert await sessions.recheck() == 1
    assert live.cut is not None and "could not confirm the grant" in live.cut


async def test_the_database_answering_confirms_every_session() -> None:
    sessions = LiveSessions(fail_closed_after=0.5, now=lambda: NOW)
    live = Session(NOW + timedelta(hours=1))
    sessions.add(live)
    sessions._confirmed[live] -= 10
    sessions.confirm_all()
    assert await sessions.recheck() == 0 and live.cut is None


async def test_an_ended_window_is_cut_at_once_without_a_database() -> None:
    sessions = LiveSessions(fail_closed_after=60, now=lambda: NOW)
    ended = Session(NOW - timedelta(seconds=1))
    sessions.add(ended)
    assert await sessions.recheck() == 1
    assert ended.cut == "the broker could not confirm the grant"


class Counting(Session):
    """A session whose check answers (allowed) after a moment, counting checks in flight."""

    in_flight = 0
    most = 0
    asked = 0

    async def still_allowed(self) -> str | None:
        cls = type(self)
        cls.asked += 1
        cls.in_flight += 1
        cls.most = max(cls.most, cls.in_flight)
        await asyncio.sleep(0.01)
        cls.in_flight -= 1
        return None


async def test_a_recheck_of_many_sessions_keeps_few_database_checks_in_flight() -> None:
    """A thousand live sessions re-checked at once must leave database connections for the
    watchdog's probe and new logins: a bounded number of checks run at a time."""
    sessions = LiveSessions(fail_closed_after=60, now=lambda: NOW)
    for _ in range(60):
        sessions.add(Counting(NOW + timedelta(hours=1)))
    assert await sessions.recheck() == 0
    assert Counting.asked == 60
    assert 1 < Counting.most <= RECHECK_CONCURRENCY


class Unaskable(Session):
    async def still_allowed(self) -> str | None:
        raise AssertionError("the database is away: nothing may be asked of it")


async def test_while_the_database_is_away_sessions_expire_without_asking_it() -> None:
    sessions = LiveSessions(fail_closed_after=0.2, now=lambda: NOW)
    fresh, stale = Unaskable(NOW + timedelta(hours=1)), Unaskable(NOW + timedelta(hours=1))
    ended = Unaskable(NOW - timedelta(seconds=1))
    for session in (fresh, stale, ended):
        sessions.add(session)
    sessions._confirmed[stale] -= 1.0  # unconfirmed for longer than the grace
    assert await sessions.expire_unconfirmed("no answer") == 2
    assert fresh.cut is None
    assert stale.cut is not None and "could not confirm the grant for 1 s" in stale.cut
    assert ended.cut == "the broker could not confirm the grant"
    sessions.remove(stale)
    sessions.remove(ended)
    sessions._confirmed[fresh] -= 1.0
    assert await sessions.expire_unconfirmed("no answer") == 1
    assert fresh.cut is not None
