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
import time
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from broker import metrics
from broker.domain.protocols import Protocol
from broker.errors import BrokerError, DeviceError, Refused
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT, LIVE_SESSIONS, REFUSALS
from broker.http.ratelimit import RateLimit
from broker.http.security import (
    OWN_HEADERS,
    foreign_source,
    refuse_foreign,
)
from broker.recording.har import BodyCapture, WebSocketLog
from broker.services.grants import check_access
from broker.store.models import Device, Grant, Technician
from broker.webproxy import har_entries
from broker.webproxy.live import SHUTTING_DOWN, WINDOW_CLOSED, ProxiedSession, monotonic_ms
from broker.webproxy.origin import weblogin_command
from broker.webproxy.paths import (
    PathRefused,
    check_path,
    rewrite_html,
    rewrite_location,
    split_target,
)
from broker.webproxy.settings import load_target
from broker.webproxy.signin import digest, session_by_cookie
from broker.webproxy.signin_pages import (
    COOKIE,
    WEB_SESSIONS,
    device_failure,
    on_grant_host,
    own_url,
    refuse_new_session,
    signin_page,
    signin_post,
)
from broker.webproxy.upstream_headers import HOP_BY_HOP, upstream_headers

log = structlog.get_logger("broker.webproxy")

CHUNK = 64 * 1024
HTML_REWRITE_LIMIT = 4 * 1024 * 1024  # larger HTML pages pass through unrewritten
RESUME_LOCK = web.AppKey("web_resume_lock", asyncio.Lock)
# Never passed to the browser: device cookies stay in the broker's jar; headers that would
# bind the broker's whole origin to a device's choices.
DROP_RESPONSE = HOP_BY_HOP | {"set-cookie", "set-cookie2", "content-length",
                              "strict-transport-security", "alt-svc", "public-key-pins",
                              "clear-site-data"}


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
        raise web.HTTPForbidden(text=_closed_text(live.device, reason))
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


def _closed_text(device: str, reason: str) -> str:
    if reason == WINDOW_CLOSED:
        return f"Your access window for {device} has closed; this page no longer works."
    return (f"Your access window for {device} was closed early"
            f" ({reason.removeprefix('access ended: ')}); this page no longer works.")


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
    async with ctx.store.session() as db:
        tech = await db.get(Technician, row.technician_id)
        device = await db.get(Device, row.device_id)
        grant = await db.get(Grant, row.grant_id)
    if row.ended_at is not None or tech is None or device is None or grant is None:
        raise web.HTTPForbidden(text=_closed_text(device.name if device else "this device",
                                                  row.end_reason or WINDOW_CLOSED))
    access = await check_access(ctx, tech.name, device.name, Protocol.WEB)
    if not access.allowed or access.grant is None or access.grant.id != grant.id:
        raise web.HTTPForbidden(text=_closed_text(device.name, WINDOW_CLOSED))
    try:
        target = await load_target(ctx, device.id or 0)
    except BrokerError as exc:
        await device_failure(ctx, device.name, tech.name, request.remote or "unknown", exc)
    await refuse_new_session(request)
    live = ProxiedSession(ctx, request.app[LIVE_SESSIONS], row, tech, device, access.grant,
                          target, request.remote or "unknown")
    await live.start()
    return live


def _upstream_headers(request: web.Request, live: ProxiedSession) -> CIMultiDict[str]:
    return upstream_headers(request.headers, live.target.origin, live.prefix,
                            own_url(request, live.grant.id or 0),
                            request.remote or "unknown")


def _response_headers(response: web.StreamResponse, upstream: CIMultiDictProxy[str],
                      live: ProxiedSession) -> None:
    named = {token.strip().lower() for token in upstream.get("Connection", "").split(",")}
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered in DROP_RESPONSE or lowered in named:
            continue
        if lowered in ("location", "content-location"):
            value = rewrite_location(value, live.target.origin, live.prefix)
        response.headers.add(name, value)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    response.headers.setdefault("Cache-Control", "no-store")  # nothing left behind in caches
    response[OWN_HEADERS] = True


async def relay_http(request: web.Request, live: ProxiedSession, client: aiohttp.ClientSession,
                     url: URL) -> web.StreamResponse:
    assert live.har is not None
    started, t0 = live.ctx.now(), time.monotonic()
    headers = _upstream_headers(request, live)
    sent = live.har.body()
    received = live.har.body()
    data = None
    if request.body_exists:
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)

        async def stream() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(CHUNK):
                sent.feed(chunk)
                metrics.WEB_TO_DEVICE.inc(len(chunk))
                yield chunk

        data = stream()
    response: web.StreamResponse | None = None
    wait_ms = 0.0
    upstream_info: tuple[int, str | None, object, CIMultiDictProxy[str]] | None = None
    error: str | None = None
    try:
        async with client.request(request.method, url, headers=headers, data=data,
                                  allow_redirects=False) as upstream:
            wait_ms = monotonic_ms(t0)
            upstream_info = (upstream.status, upstream.reason, upstream.version,
                             upstream.headers)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            _response_headers(response, upstream.headers, live)
            await _relay_body(request, response, upstream, live, received)
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        error = f"{exc.__class__.__name__}: {exc}"
        if response is not None and response.prepared:
            # mid-body: drop the connection, so the browser cannot take a cut body for whole
            if request.transport is not None:
                request.transport.abort()
            return response
        if live.closing is not None:
            raise web.HTTPForbidden(text=_closed_text(live.device, live.closing)) from None
        await live.audit("web.device_failed", path=request.path[:300], error=error[:500])
        raise web.HTTPBadGateway(text=f"{live.device}'s web interface did not answer"
                                      f" ({exc.__class__.__name__})") from None
    finally:
        _record_http(live, request, url, headers, sent, received, upstream_info, started,
                     wait_ms, monotonic_ms(t0) - wait_ms, error)
    return response


async def _relay_body(request: web.Request, response: web.StreamResponse,
                      upstream: aiohttp.ClientResponse, live: ProxiedSession,
                      captured: BodyCapture) -> None:
    status = upstream.status
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        if request.method == "HEAD" and upstream.content_length is not None:
            response.headers["Content-Length"] = str(upstream.content_length)
        await response.prepare(request)
        await response.write_eof()
        return
    mime = upstream.headers.get("Content-Type", "").lower()
    encoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity"
    if mime.startswith("text/html") and not encoded and (
            upstream.content_length is None or upstream.content_length <= HTML_REWRITE_LIMIT):
        buffer = bytearray()
        async for chunk in upstream.content.iter_chunked(CHUNK):
            captured.feed(chunk)
            metrics.WEB_FROM_DEVICE.inc(len(chunk))
            buffer.extend(chunk)
            if len(buffer) > HTML_REWRITE_LIMIT:
                break
        else:
            body = _rewritten(bytes(buffer), upstream.charset or "utf-8", request, live)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return
        await response.prepare(request)  # too large to rewrite: pass it through as it is
        await response.write(bytes(buffer))
    elif upstream.content_length is not None:
        response.content_length = upstream.content_length
        await response.prepare(request)
    else:
        await response.prepare(request)
    async for chunk in upstream.content.iter_chunked(CHUNK):
        captured.feed(chunk)
        metrics.WEB_FROM_DEVICE.inc(len(chunk))
        await response.write(chunk)
    await response.write_eof()


def _rewritten(body: bytes, charset: str, request: web.Request, live: ProxiedSession) -> bytes:
    try:
        text = body.decode(charset, errors="surrogateescape")
    except LookupError:
        return body  # a charset Python does not know: leave the page alone
    own = urlsplit(own_url(request, live.grant.id or 0))
    ws_origin = ("wss://" if own.scheme == "https" else "ws://") + own.netloc
    rewritten = rewrite_html(text, live.target.origin, live.prefix, ws_origin)
    return rewritten.encode(charset, errors="surrogateescape")


def _record_http(live: ProxiedSession, request: web.Request, url: URL,
                 headers: CIMultiDict[str], sent: BodyCapture, received: BodyCapture,
                 upstream: tuple[int, str | None, object, CIMultiDictProxy[str]] | None,
                 started: datetime, wait_ms: float, receive_ms: float, error: str | None) -> None:
    if live.har is None or live.har.closed:
        return
    try:
        request_part = har_entries.request_part(
            request.method, url, headers.items(), sent.finish(),
            request.headers.get("Content-Type", ""))
        if upstream is None:
            response_part = har_entries.response_part(0, error or "no response", None, {},
                                                      None)
        else:
            response_part = har_entries.response_part(*upstream, received.finish())
        extra = {"_error": error} if error else {}
        live.har.add(har_entries.http_entry(started, request_part, response_part, wait_ms,
                                            max(receive_ms, 0.0), request.path_qs, **extra))
    except OSError as exc:
        log.error("recording a web request failed", session=live.session_id, error=str(exc))


async def relay_websocket(request: web.Request, live: ProxiedSession,
                          client: aiohttp.ClientSession, url: URL) -> web.StreamResponse:
    assert live.har is not None
    started, t0 = live.ctx.now(), time.monotonic()
    headers = _upstream_headers(request, live)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    ws_url = live.target.origin.websocket(url)
    try:
        upstream = await client.ws_connect(ws_url, protocols=protocols, headers=headers,
                                           autoclose=False, autoping=True, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:
        live.har.add(har_entries.websocket_entry(
            started, ws_url, headers.items(), exc.status, exc.message, exc.headers or {}, [],
            0, monotonic_ms(t0), request.path_qs, "refused by the device"))
        raise web.HTTPBadGateway(text=f"{live.device} refused the WebSocket"
                                      f" (HTTP {exc.status})") from None
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        await live.audit("web.device_failed", path=request.path[:300],
                         error=f"{exc.__class__.__name__}: {exc}"[:500])
        raise web.HTTPBadGateway(text=f"{live.device}'s web interface did not answer"
                                      f" ({exc.__class__.__name__})") from None
    answer = getattr(upstream, "_response", None)
    browser = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else [],
                                    autoping=True, max_msg_size=0)
    browser[OWN_HEADERS] = True
    wslog = live.websocket_log()
    limit = live.har.body_limit
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    close = "ended"
    live.sockets.add(browser)
    live.relays.add(done)
    try:
        await browser.prepare(request)
        close = await _pump_websocket(browser, upstream, wslog, limit)
    finally:
        await upstream.close()
        live.sockets.discard(browser)
        wslog.close()
        live.har.add(har_entries.websocket_entry(
            started, ws_url, headers.items(), answer.status if answer else 101,
            answer.reason if answer else "Switching Protocols",
            answer.headers if answer else {}, wslog.messages, wslog.count, monotonic_ms(t0),
            request.path_qs, live.closing or close))
        live.relays.discard(done)
        done.set_result(None)
    return browser


WebSocketEnd = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump_websocket(browser: web.WebSocketResponse,
                          upstream: aiohttp.ClientWebSocketResponse, wslog: WebSocketLog,
                          limit: int) -> str:

    async def relay(source: WebSocketEnd, sink: WebSocketEnd, direction: str,
                    who: str) -> str:
        moved = metrics.WEB_TO_DEVICE if direction == "send" else metrics.WEB_FROM_DEVICE
        async for message in source:
            if message.type is aiohttp.WSMsgType.TEXT:
                wslog.message(direction, message.data, limit)
                moved.inc(len(message.data))
                await sink.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                wslog.message(direction, message.data, limit)
                moved.inc(len(message.data))
                await sink.send_bytes(message.data)
        await sink.close(code=source.close_code or 1000)
        return f"closed by the {who} ({source.close_code})"

    tasks = [asyncio.ensure_future(relay(browser, upstream, "send", "browser")),
             asyncio.ensure_future(relay(upstream, browser, "receive", "device"))]
    finished, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    first = finished.pop()
    if first.cancelled() or first.exception() is not None:
        return "relay error"
    return str(first.result())
