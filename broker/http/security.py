"""Secrets derived for one purpose each, CSRF tokens, and the response security headers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.http.keys import SECRET

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
# Responses that must not carry the portal's headers (the device web proxy sets its own)
# mark themselves with this key.
OWN_HEADERS = web.ResponseKey("own_headers", bool)


def subkey(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (``"approval-jwt"``, ``"csrf"``, ``"cookie"`` ...),
    so that no two uses ever share a key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"broker/{purpose}".encode()).derive(master)


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
