"""Relaying one HTTP request to the device and its answer back, recorded in the HAR: headers
rewritten both ways, bodies streamed, HTML links rewritten to the broker's prefix."""

from __future__ import annotations

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
from broker.errors import RecordingUnavailable
from broker.http.security import (
    OWN_HEADERS,
)
from broker.recording.har import BodyCapture
from broker.webproxy import har_entries
from broker.webproxy.live import ProxiedSession, closed_text, monotonic_ms, unavailable
from broker.webproxy.paths import (
    rewrite_html,
    rewrite_location,
)
from broker.webproxy.signin_pages import (
    own_url,
)
from broker.webproxy.upstream_headers import HOP_BY_HOP, upstream_headers

log = structlog.get_logger("broker.webproxy")
CHUNK = 64 * 1024
HTML_REWRITE_LIMIT = 4 * 1024 * 1024  # larger HTML pages pass through unrewritten
# Never passed to the browser: device cookies stay in the broker's jar; headers that would
# bind the broker's whole origin to a device's choices.
DROP_RESPONSE = HOP_BY_HOP | {"set-cookie", "set-cookie2", "content-length",
                              "strict-transport-security", "alt-svc", "public-key-pins",
                              "clear-site-data"}

def upstream_headers_for(request: web.Request, live: ProxiedSession) -> CIMultiDict[str]:
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
    headers = upstream_headers_for(request, live)
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
    except (RecordingUnavailable, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        lost = sent.lost or received.lost  # a body the storage did not take: nothing more goes
        error = f"not recorded: {lost}" if lost else f"{exc.__class__.__name__}: {exc}"
        if response is not None and response.prepared:
            # mid-body: drop the connection, so the browser cannot take a cut body for whole
            if request.transport is not None:
                request.transport.abort()
            return response
        if lost is not None:
            raise unavailable(str(RecordingUnavailable(lost))) from None
        if live.closing is not None:
            raise web.HTTPForbidden(text=closed_text(live.device, live.closing)) from None
        await live.audit("web.device_failed", path=request.path[:300], error=error[:500])
        raise web.HTTPBadGateway(text=f"{live.device}'s web interface did not answer"
                                      f" ({exc.__class__.__name__})") from None
    except Exception:
        if response is not None and response.prepared and request.transport is not None:
            request.transport.abort()  # a body cut short is never left hanging, nor whole
        raise
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


