"""Bearer-token authentication for the API, with failed attempts rate-limited per address.

An address that keeps presenting bad tokens is answered 429 for a while, before its token is
even looked at, so that guessing stays slow even for a guess that happens to be right.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from broker.http.keys import CONTEXT
from broker.http.ratelimit import MAX_CLIENTS, RateLimit
from broker.services.api_tokens import Caller, Role, authenticate

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="broker"'}


@dataclass
class FailedAuth:
    """Failed attempts per client address: ``burst`` at once, refilled at ``per_minute``."""

    per_minute: float = 10
    burst: int = 20
    clock: Callable[[], float] = time.monotonic
    _limit: RateLimit = field(init=False)
    _blocked: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._limit = RateLimit(self.per_minute, self.burst, self.clock)

    def wait(self, address: str) -> float:
        """Seconds this address must still wait before its tokens are checked again."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    def failed(self, address: str) -> float:
        wait = self._limit.check(address)
        if wait:
            self._blocked[address] = self.clock() + wait
            if len(self._blocked) > MAX_CLIENTS:
                del self._blocked[next(iter(self._blocked))]
        return wait


FAILED_AUTH = web.AppKey("api_failed_auth", FailedAuth)


def _too_many(wait: float) -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(
        text="too many failed authentication attempts from this address; try again shortly",
        headers={"Retry-After": str(max(1, math.ceil(wait)))})


async def caller_of(request: web.Request, roles: frozenset[Role]) -> Caller:
    """The authenticated caller, or 401/403/429."""
    limiter = request.app[FAILED_AUTH]
    address = request.remote or "unknown"
    wait = limiter.wait(address)
    if wait:
        raise _too_many(wait)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    caller = None
    if scheme.lower() == "bearer" and presented.strip():
        caller = await authenticate(request.app[CONTEXT], presented.strip())
    if caller is None:
        wait = limiter.failed(address)
        if wait:
            raise _too_many(wait)
        message = ("a bearer token is required (Authorization: Bearer vab_...)" if not header
                   else "the bearer token is unknown, expired or revoked")
        raise web.HTTPUnauthorized(text=message, headers=CHALLENGE)
    if caller.role not in roles:
        raise web.HTTPForbidden(
            text=f"token {caller.name!r} has role {caller.role}, which may not do this "
                 f"(allowed: {', '.join(sorted(roles))})")
    return caller
