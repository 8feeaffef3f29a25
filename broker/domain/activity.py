"""Activity over time, for charts and timelines: pure arithmetic on windows and instants."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo


@dataclass(frozen=True)
class DayActivity:
    day: date
    sessions: int  # sessions started that day
    active_grants: int  # grants whose window overlapped the day


def days_ending(today: date, count: int) -> list[date]:
    return [today - timedelta(days=n) for n in range(count - 1, -1, -1)]


def daily_activity(days: list[date], zone: tzinfo, session_starts: Iterable[datetime],
                   grant_windows: Iterable[tuple[datetime, datetime]]) -> list[DayActivity]:
    """Per local day of ``zone``: sessions started, and grants active at any time in it.
    A grant's window is ``[start, end)``; ``end`` is the revocation time if it was revoked."""
    bounds = {day: (datetime.combine(day, time(), zone),
                    datetime.combine(day + timedelta(days=1), time(), zone)) for day in days}
    started = dict.fromkeys(days, 0)
    for moment in session_starts:
        local = moment.astimezone(zone).date()
        if local in started:
            started[local] += 1
    active = dict.fromkeys(days, 0)
    for start, end in grant_windows:
        for day, (lo, hi) in bounds.items():
            if start < hi and end > lo:
                active[day] += 1
    return [DayActivity(day, started[day], active[day]) for day in days]
