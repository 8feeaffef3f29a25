"""CSRF tokens and the response security headers (keys: :func:`broker.credentials.keys.subkey`)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from broker.credentials.keys import subkey
from broker.http.keys import REFUSALS, SECRET

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
# Responses that must not carry the portal's headers (the device web proxy sets its own)
# mark themselves with this key.
OWN_HEADERS = web.ResponseKey("own_headers", bool)


def csrf_token(app: web.Application, binding: str) -> str:
    """A CSRF token bound to something only this visitor holds (a staff session id, an
    approval token's id): forms carry it, and :func:`csrf_ok` checks it."""
    key = subkey(app[SECRET], "csrf")
    return hmac.new(key, binding.encode(), hashlib.sha256).hexdigest()


def csrf_ok(app: web.Application, binding: str, token: object) -> bool:
    return isinstance(token, str) and hmac.compare_digest(csrf_token(app, binding), token)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _add_headers(request, exc)
        raise
    if not response.get(OWN_HEADERS):
        _add_headers(request, response)
    return response


def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


# -- where a request comes from ----------------------------------------------------------
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def own_origins(request: web.Request, public_url: str) -> set[str]:
    """This listener's origin as the browser names it: the configured public URL's, and
    the one the request itself reached (plain HTTP behind a TLS-terminating proxy)."""
    parts = urlsplit(public_url)
    own = {f"{parts.scheme}://{parts.netloc}".lower()}
    own.add(f"{'https' if request.secure else 'http'}://{request.host}".lower())
    return own


def foreign_source(request: web.Request, public_url: str) -> str | None:
    """Why a request comes from another origin (None: from this origin, or from a
    non-browser client that sends neither Sec-Fetch-Site nor Origin).

    Sec-Fetch-Site decides when the browser sends it (only ``same-origin`` and ``none``, a
    typed URL or bookmark, pass: ``same-site`` is another port or host of the same site);
    else Origin must be this listener's own (``null``, sent by sandboxed frames and by
    browsers under ``Referrer-Policy: no-referrer``, is not)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.lower() in ("same-origin", "none"):
            return None
        return f"Sec-Fetch-Site is {site[:40]!r}"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in own_origins(request, public_url):
        return f"Origin {origin[:200]!r} is not this site"
    return None


async def refuse_foreign(request: web.Request, reason: str, kind: str) -> None:
    """Audit (rate-limited, per client address) and answer 403."""
    client = request.remote or "unknown"
    await request.app[REFUSALS].refused(kind, f"web:{client}", client, None,
                                        method=request.method, path=request.path[:300],
                                        reason=reason)
    raise web.HTTPForbidden(text="refused: this request was sent from another site")


Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def same_origin_writes(public_url: Callable[[web.Request], str]) -> Middleware:
    """Middleware: a state-changing request (not GET/HEAD/OPTIONS) from another origin is
    refused and audited, whatever CSRF token it carries (a page of another origin of the
    same site, such as the device origin on another port, gets the portal's
    SameSite=Strict cookies sent along)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in SAFE_METHODS:
            reason = foreign_source(request, public_url(request))
            if reason is not None:
                await refuse_foreign(request, reason, "web.cross_origin_refused")
        return await handler(request)

    return check
