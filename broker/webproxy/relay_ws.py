"""Relaying a WebSocket between the browser and the device, every frame recorded."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from broker import metrics
from broker.errors import RecordingUnavailable
from broker.http.security import (
    OWN_HEADERS,
)
from broker.recording.har import WebSocketLog
from broker.webproxy import har_entries
from broker.webproxy.live import ProxiedSession, monotonic_ms, unavailable
from broker.webproxy.relay_http import upstream_headers_for

log = structlog.get_logger("broker.webproxy")

async def relay_websocket(request: web.Request, live: ProxiedSession,
                          client: aiohttp.ClientSession, url: URL) -> web.StreamResponse:
    assert live.har is not None
    started, t0 = live.ctx.now(), time.monotonic()
    headers = upstream_headers_for(request, live)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    ws_url = live.target.origin.websocket(url)
    try:  # its log first: nothing reaches the device that could not be recorded
        wslog = live.websocket_log()
    except RecordingUnavailable as exc:
        raise unavailable(str(exc)) from None
    try:
        upstream = await client.ws_connect(ws_url, protocols=protocols, headers=headers,
                                           autoclose=False, autoping=True, max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:
        wslog.close()
        live.har.add(har_entries.websocket_entry(
            started, ws_url, headers.items(), exc.status, exc.message, exc.headers or {}, [],
            0, monotonic_ms(t0), request.path_qs, "refused by the device"))
        raise web.HTTPBadGateway(text=f"{live.device} refused the WebSocket"
                                      f" (HTTP {exc.status})") from None
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        wslog.close()
        await live.audit("web.device_failed", path=request.path[:300],
                         error=f"{exc.__class__.__name__}: {exc}"[:500])
        raise web.HTTPBadGateway(text=f"{live.device}'s web interface did not answer"
                                      f" ({exc.__class__.__name__})") from None
    answer = getattr(upstream, "_response", None)
    browser = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else [],
                                    autoping=True, max_msg_size=0)
    browser[OWN_HEADERS] = True
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
