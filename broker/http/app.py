"""The aiohttp applications: middlewares, templates, static files, and each feature's routes.

Two applications on two listeners, so that device web UIs never share the portal's origin:
:func:`create_app` is the portal (staff UI, approval pages, API) on ``[http] listen``;
:func:`create_device_app` serves nothing but the device web proxy and its sign-in page on
``[webproxy] listen``. Features add themselves with a ``setup(app)`` function.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from markupsafe import Markup

import broker.http.approvals as approval_pages
import broker.http.onboarding as onboarding_pages
import broker.http.vendor_portal as vendor_portal
from broker import webproxy
from broker.credentials.keys import KeyPaths, load_secret_bytes
from broker.domain.durations import format_duration
from broker.domain.text import visible
from broker.errors import BrokerError
from broker.http import api, staff
from broker.http import metrics as metrics_endpoint
from broker.http.errors import error_pages
from broker.http.keys import CONTEXT, LIVE_SESSIONS, NODE, REFUSALS, SECRET
from broker.http.security import Handler, same_origin_writes, security_headers
from broker.http.times import time_filter
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.readiness import NodeState, readiness
from broker.services.refusals import RefusalLog
from broker.webproxy.origin import device_base_url, without_addresses

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SIGNIN_STYLE = "/w/_broker/broker.css"  # the one portal file the device origin serves
# Audit rows per (source address, kind of refusal) per minute; beyond them a flood is counted
# into one refusal.suppressed row (broker/services/refusals.py).
REFUSAL_BURST = 20


def _base(ctx: Context, sessions: LiveSessions | None, middlewares: list[object],
          node: NodeState | None = None) -> web.Application:
    settings = ctx.config.settings
    app = web.Application(middlewares=[*middlewares, throttled_refusals],  # type: ignore[list-item]
                          client_max_size=settings.http.max_body)
    app[CONTEXT] = ctx
    app[REFUSALS] = RefusalLog(ctx, burst=REFUSAL_BURST)
    app.on_cleanup.append(_flush_refusals)
    app[LIVE_SESSIONS] = sessions if sessions is not None else LiveSessions()
    app[NODE] = node if node is not None else NodeState()
    app[SECRET] = load_secret_bytes(KeyPaths.of(ctx.config).web_key, "the web secret key")
    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
        finalize=shown)
    env = aiohttp_jinja2.get_env(app)
    env.filters["duration"] = lambda seconds: format_duration(timedelta(seconds=int(seconds)))
    env.filters["fields"] = data_fields
    env.filters["when"] = time_filter(ZoneInfo(settings.broker.timezone))
    return app


def create_app(ctx: Context, sessions: LiveSessions | None = None,
               node: NodeState | None = None) -> web.Application:
    """The portal: staff UI, approval pages, API. Never device content."""
    public = ctx.config.settings.broker.public_url
    app = _base(ctx, sessions, [security_headers, error_pages,
                                same_origin_writes(lambda request: public)], node)
    aiohttp_jinja2.get_env(app).globals["static"] = lambda name: f"/static/{name}"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if not ctx.config.settings.metrics.listen:  # else on a listener of its own (broker.server)
        metrics_endpoint.setup(app)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC)
    api.setup(app)
    staff.setup(app)
    approval_pages.setup(app)
    onboarding_pages.setup(app)
    vendor_portal.setup(app)
    app.router.add_route("*", "/w/{tail:.*}", to_device_origin)
    return app


def create_device_app(ctx: Context, sessions: LiveSessions | None = None,
                      node: NodeState | None = None) -> web.Application:
    """The device origin: the web proxy and its sign-in page, and nothing of the portal."""
    app = _base(ctx, sessions, [security_headers, error_pages, no_device_addresses], node)
    aiohttp_jinja2.get_env(app).globals["static"] = lambda name: SIGNIN_STYLE
    app.router.add_get(SIGNIN_STYLE, signin_style)
    webproxy.setup(app)
    return app


def data_fields(data: str) -> list[tuple[str, str]]:
    """An audit row's JSON data as (key, text) pairs to show; nested values stay compact JSON."""
    try:
        parsed = json.loads(data)
    except ValueError:
        return [("data", data)]
    if not isinstance(parsed, dict):
        return [("data", json.dumps(parsed))]
    return [(str(key), value if isinstance(value, str) else json.dumps(value))
            for key, value in parsed.items() if value is not None]


async def favicon(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def readyz(request: web.Request) -> web.Response:
    """200 when this node takes new sessions; 503 with one line per problem otherwise."""
    state = await readiness(request.app[CONTEXT], draining=request.app[NODE].draining)
    return web.json_response({"ready": state.ready, "problems": list(state.problems),
                              "node": request.app[CONTEXT].node},
                             status=200 if state.ready else 503,
                             headers={"Cache-Control": "no-store"})


async def _flush_refusals(app: web.Application) -> None:
    """At shutdown, write the counts of refusals summarised but not yet written."""
    try:
        await app[REFUSALS].flush()
    except Exception:  # shutting down goes on; the log line keeps what the row would say
        structlog.get_logger("broker.http").exception("refusal counts not written")


def source(request: web.Request) -> str:
    return request.remote or "unknown"


@web.middleware
async def throttled_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 429 from any rate limit (logins, approval links, API failures, sign-in links) is a
    refusal too: audited as ``http.throttled`` through the app's RefusalLog."""
    try:
        return await handler(request)
    except web.HTTPTooManyRequests:
        await request.app[REFUSALS].refused("http.throttled", "anonymous", source(request),
                                            None, method=request.method,
                                            path=request.path[:200])
        raise


def shown(value: Any) -> Any:
    """What every ``{{ ... }}`` prints: stored text with control, bidi-override and
    line-separator characters written as visible escapes (``\\x1b``), then HTML-escaped."""
    if isinstance(value, Markup):
        return Markup(visible(str(value)))  # noqa: S704  (escapes only; already markup)
    if isinstance(value, str):
        return visible(value)
    return value


@web.middleware
async def no_device_addresses(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Device origin: no refusal or error page names a device's address (host, port, URL),
    whichever code raised it; the details are in the audit log."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status_code >= 400 and exc.text:
            exc.text = without_addresses(exc.text)
        raise
    except BrokerError as exc:
        raise type(exc)(without_addresses(str(exc))) from None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "node": request.app[CONTEXT].node})


async def signin_style(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "broker.css")


async def to_device_origin(request: web.Request) -> web.StreamResponse:
    """``/w/...`` on the portal: device pages live on the device origin only."""
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPNotFound()
    base = device_base_url(request.app[CONTEXT].config.settings)
    raise web.HTTPFound(base + request.raw_path if request.raw_path.startswith("/") else base)
