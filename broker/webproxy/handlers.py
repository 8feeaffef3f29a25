"""Routes of the device web proxy.

    GET/POST /w/signin/<token>     the one-time sign-in link (see signin_pages)
    *        /w/<grant>/<path>     the device's web UI, proxied, recorded

Served only on the device origin (``[webproxy] listen``), never the portal's; with
``[webproxy] grant_host`` the Host header must name the grant (one origin per grant).
The cookie is ``Path=/w/<grant>/``, HttpOnly, SameSite=Strict, Secure when the device origin
is HTTPS; the server keeps only its hash. The sign-in POST must come from the sign-in page
itself (same origin, and a CSRF token bound to a pre-session cookie set by that page), so
another site cannot sign a browser in as someone else. Requests another origin makes the
browser send (Origin or Sec-Fetch-Site say so) never reach the device. Every proxied request
is checked against the live session (which the revocation machinery ends within a second of
a revoke or the end of the window) and against the window's end itself. Pages shown to the
browser name the device by its broker name; the device's address stays in the audit log.
"""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from broker.domain.protocols import Protocol
from broker.errors import BrokerError, DeviceError, Refused
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT, LIVE_SESSIONS, REFUSALS
from broker.http.ratelimit import RateLimit
from broker.http.security import (
    foreign_source,
    refuse_foreign,
)
from broker.services.access_session import WINDOW_CLOSED
from broker.services.device_web import load_target
from broker.services.grants import check_access
from broker.services.web_signin import digest, session_by_cookie, session_parties
from broker.webproxy.live import SHUTTING_DOWN, ProxiedSession, closed_text
from broker.webproxy.origin import weblogin_command
from broker.webproxy.paths import (
    PathRefused,
    check_path,
    split_target,
)
from broker.webproxy.relay_http import relay_http
from broker.webproxy.relay_ws import relay_websocket
from broker.webproxy.signin_pages import (
    COOKIE,
    WEB_SESSIONS,
    device_failure,
    on_grant_host,
    own_url,
    refuse_new_session,
    signin_page,
    signin_post,
    start_session,
)

log = structlog.get_logger("broker.webproxy")

RESUME_LOCK = web.AppKey("web_resume_lock", asyncio.Lock)


def not_signed_in(request: web.Request) -> str:
    settings = request.app[CONTEXT].config.settings
    return ("you are not signed in to this device's web interface; get a sign-in link with: "
            + weblogin_command(settings))


def setup(app: web.Application) -> None:
    app[WEB_SESSIONS] = {}
    app[RESUME_LOCK] = asyncio.Lock()
    limiter = RateLimit(per_minute=30, burst=10)

    async def show(request: web.Request) -> web.StreamResponse:
        limiter.enforce(request)
        await on_grant_host(request, None)
        return await signin_page(request)

    async def redeem(request: web.Request) -> web.StreamResponse:
        limiter.enforce(request)
        await on_grant_host(request, None)
        return await signin_post(request)

    app.router.add_get("/w/signin/{token}", show)
    app.router.add_post("/w/signin/{token}", redeem)
    app.router.add_route("*", r"/w/{grant:\d+}", _to_prefix)
    app.router.add_route("*", r"/w/{grant:\d+}/{tail:.*}", proxy)
    app.on_cleanup.append(_close_all)


async def _close_all(app: web.Application) -> None:
    await asyncio.gather(*(s.terminate(SHUTTING_DOWN)
                           for s in app[WEB_SESSIONS].values()), return_exceptions=True)


# -- the proxy -------------------------------------------------------------------------------
async def _to_prefix(request: web.Request) -> web.StreamResponse:
    if not request.raw_path.startswith("/"):
        raise BadInput(None, "absolute-form request targets are not accepted")
    await on_grant_host(request, int(request.match_info["grant"]))
    raise web.HTTPPermanentRedirect(f"/w/{int(request.match_info['grant'])}/")


async def proxy(request: web.Request) -> web.StreamResponse:
    grant_id = int(request.match_info["grant"])
    prefix = f"/w/{grant_id}/"
    if not request.raw_path.startswith("/"):
        raise BadInput(None, "absolute-form request targets are not accepted")
    if request.method in ("CONNECT", "TRACE"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST", "PUT", "PATCH",
                                                        "DELETE", "OPTIONS"])
    await on_grant_host(request, grant_id)
    foreign = foreign_source(request, own_url(request, grant_id))
    if foreign is not None:  # another origin (another grant, the portal) drives this page
        await refuse_foreign(request, foreign, "web.cross_origin_refused")
    live = await _session_for(request, grant_id)
    reason = live.refusal()
    if reason is not None:
        if live.closing is None:
            await live.terminate(reason)
        raise web.HTTPForbidden(text=closed_text(live.device, reason))
    try:
        rest, query = split_target(request.raw_path, prefix)
        url = live.target.origin.upstream(check_path(rest), query)
    except PathRefused as exc:
        await live.audit("web.request_refused", path=request.raw_path[:300], reason=str(exc))
        raise BadInput(None, f"refused: {exc}") from None
    try:
        client = await live.client()
    except (DeviceError, Refused) as exc:
        await device_failure(live.ctx, live.device, live.technician, live.client_addr, exc)
    live.requests += 1
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await relay_websocket(request, live, client, url)
    return await relay_http(request, live, client, url)


async def _session_for(request: web.Request, grant_id: int) -> ProxiedSession:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        await _refused(request, "web.not_signed_in", grant_id, "no sign-in cookie")
        raise web.HTTPForbidden(text=not_signed_in(request))
    key = digest(cookie)
    sessions = request.app[WEB_SESSIONS]
    live = sessions.get(key)
    if live is None:
        if await session_by_cookie(request.app[CONTEXT], cookie) is None:
            await _refused(request, "web.not_signed_in", grant_id, "unknown sign-in cookie")
            # bogus cookies never wait on the lock
            raise web.HTTPForbidden(text=not_signed_in(request))
        async with request.app[RESUME_LOCK]:
            live = sessions.get(key) or await _resume(request, cookie)
            sessions[key] = live
    if live.grant.id != grant_id:
        await _refused(request, "web.wrong_grant", grant_id,
                       f"signed in for grant {live.grant.id}")
        raise web.HTTPForbidden(text=f"this sign-in is for grant {live.grant.id}, not grant"
                                     f" {grant_id}")
    return live


async def _refused(request: web.Request, kind: str, grant_id: int, reason: str) -> None:
    """Audit a refusal of the proxy (rate-limited per client address and kind)."""
    client = request.remote or "unknown"
    await request.app[REFUSALS].refused(kind, f"web:{client}", client, f"grant:{grant_id}",
                                        path=request.path[:300], reason=reason)


async def _resume(request: web.Request, cookie: str) -> ProxiedSession:
    """A cookie this node has not seen (another node signed it in, or the broker restarted):
    carry on in a new recorded session if the web session and its grant are still good."""
    ctx = request.app[CONTEXT]
    row = await session_by_cookie(ctx, cookie)
    if row is None:
        raise web.HTTPForbidden(text=not_signed_in(request))
    tech, device, grant = await session_parties(ctx, row)
    if row.ended_at is not None or tech is None or device is None or grant is None:
        raise web.HTTPForbidden(text=closed_text(device.name if device else "this device",
                                                  row.end_reason or WINDOW_CLOSED))
    access = await check_access(ctx, tech.name, device.name, Protocol.WEB)
    if not access.allowed or access.grant is None or access.grant.id != grant.id:
        raise web.HTTPForbidden(text=closed_text(device.name, WINDOW_CLOSED))
    try:
        target = await load_target(ctx, device.id or 0)
    except BrokerError as exc:
        await device_failure(ctx, device.name, tech.name, request.remote or "unknown", exc)
    await refuse_new_session(request)
    live = ProxiedSession(ctx, request.app[LIVE_SESSIONS], row, tech, device, access.grant,
                          target, request.remote or "unknown")
    await start_session(request, live)
    return live
