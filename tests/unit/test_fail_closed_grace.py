"""A re-check that cannot be made (the database is away) keeps a session within its grant
for [broker] fail_closed_after from when the database was last known to answer, then cuts
it; a session whose window has ended is cut at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.revocation.registry import LiveSessions

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
