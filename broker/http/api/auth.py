"""Bearer-token authentication for the API: failures are rate-limited per address, valid
tokens never are.

A presented token is checked first: its SHA-256 is looked up by index (a junk string that is
not even shaped like a token is refused without touching the database). A valid token is
served whatever its address did before, so a flood of bad tokens from one address (every
client behind one proxy) cannot lock out the good ones. Only failures are counted: past the
limit an address's failures are answered 429 with ``Retry-After``. That 429 is no oracle: a
token is 256 random bits, so telling a right guess from a wrong one gains a guesser nothing,
and a throttled failure costs the broker no more than an ordinary one.

Every refusal (401 missing or bad token, 403 a token whose role may not call the operation,
429 throttled) is audited through the app's :class:`~broker.services.refusals.RefusalLog`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from broker.http.keys import CONTEXT, REFUSALS
from broker.http.ratelimit import MAX_CLIENTS, RateLimit
from broker.services.api_tokens import Caller, Role, authenticate

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="broker"'}


@dataclass
class FailedAuth:
    """Failed attempts per client address: ``burst`` at once, refilled at ``per_minute``;
    an address over the limit has its failures answered 429 until ``wait`` is over."""

    per_minute: float = 10
    burst: int = 20
    clock: Callable[[], float] = time.monotonic
    _limit: RateLimit = field(init=False)
    _blocked: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._limit = RateLimit(self.per_minute, self.burst, self.clock)

    def wait(self, address: str) -> float:
        """Seconds this address's failures are still answered 429."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._blocked[address]
            return 0.0
        return left

    def failed(self, address: str) -> float:
        """Count one failure; the seconds to wait (0: answer 401, else 429)."""
        blocked = self.wait(address)
        if blocked:
            return blocked
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
    """The authenticated caller, or 401/403/429 (each audited)."""
    address = request.remote or "unknown"
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    caller = None
    if scheme.lower() == "bearer" and presented.strip():
        caller = await authenticate(request.app[CONTEXT], presented.strip())
    refusals = request.app[REFUSALS]
    where = {"method": request.method, "path": request.path[:200]}
    if caller is None:
        wait = request.app[FAILED_AUTH].failed(address)
        if wait:
            raise _too_many(wait)  # audited as http.throttled (broker/http/app.py)
        reason = "no bearer token" if not header else "bad token"
        await refusals.refused("api.refused", "anonymous", address, None, status=401,
                               reason=reason, **where)
        message = ("a bearer token is required (Authorization: Bearer vab_...)" if not header
                   else "the bearer token is unknown, expired or revoked")
        raise web.HTTPUnauthorized(text=message, headers=CHALLENGE)
    if caller.role not in roles:
        await refusals.refused("api.refused", caller.actor, address,
                               f"api_token:{caller.name}", status=403, reason="role",
                               role=caller.role.value, allowed=sorted(roles), **where)
        raise web.HTTPForbidden(
            text=f"token {caller.name!r} has role {caller.role}, which may not do this "
                 f"(allowed: {', '.join(sorted(roles))})")
    return caller
