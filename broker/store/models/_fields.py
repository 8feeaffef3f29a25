"""Column helpers shared by the tables."""

from __future__ import annotations

from sqlmodel import Field

from broker.store.types import UTCDateTime


def _utc(**kwargs: object) -> object:
    return Field(sa_type=UTCDateTime, **kwargs)  # type: ignore[call-overload]
