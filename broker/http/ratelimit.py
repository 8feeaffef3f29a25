"""Per-client rate limits for the endpoints worth guessing at (logins, approval tokens).

A token bucket per (purpose, client address): ``burst`` requests at once, refilled at
``per_minute``. Over the limit the handler raises 429 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

MAX_CLIENTS = 10_000  # buckets kept; the oldest are dropped beyond this


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimit:
    per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def check(self, key: str) -> float:
        """Take one token for ``key``; return 0 if allowed, else seconds until allowed."""
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_minute
                            / 60)
        bucket.updated = now
        self._buckets[key] = bucket  # re-inserted: dict order is least-recently-used first
        if len(self._buckets) > MAX_CLIENTS:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) * 60 / self.per_minute

    def enforce(self, request: web.Request) -> None:
        wait = self.check(request.remote or "unknown")
        if wait:
            raise web.HTTPTooManyRequests(
                text="too many attempts from this address; try again shortly",
                headers={"Retry-After": str(math.ceil(wait))})
