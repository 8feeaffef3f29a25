"""Times on pages: in the hospital's time zone (``[broker] timezone``), UTC on hover."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

DEFAULT_FORMAT = "%Y-%m-%d %H:%M"


def time_filter(zone: ZoneInfo) -> Callable[..., Markup]:
    """A Jinja filter: ``{{ grant.end | when }}`` or ``{{ t | when('%H:%M:%S') }}``."""

    def when(moment: datetime | None, fmt: str = DEFAULT_FORMAT) -> Markup:
        if moment is None:
            return Markup("")
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        local = aware.astimezone(zone)
        utc = aware.astimezone(UTC)
        return Markup('<time datetime="{iso}" title="{utc} UTC">{local} {name}</time>').format(
            iso=utc.isoformat(timespec="seconds"), utc=utc.strftime(fmt),
            local=local.strftime(fmt), name=escape(local.tzname() or zone.key))

    return when
