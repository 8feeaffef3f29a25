"""The aiohttp applications: middlewares, templates, static files, and each feature's routes.

Two applications on two listeners, so that device web UIs never share the portal's origin:
:func:`create_app` is the portal (staff UI, approval pages, API) on ``[http] listen``;
:func:`create_device_app` serves nothing but the device web proxy and its sign-in page on
``[webproxy] listen``. Features add themselves with a ``setup(app)`` function.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

import broker.http.approvals as approval_pages
from broker import webproxy
from broker.credentials.keys import KeyPaths, load_secret_bytes
from broker.errors import BrokerError
from broker.http import api, staff
from broker.http.errors import error_pages
from broker.http.keys import CONTEXT, LIVE_SESSIONS, SECRET
from broker.http.security import REFUSALS, Handler, same_origin_writes, security_headers
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.refusals import RefusalLog
from broker.webproxy.origin import device_base_url, without_addresses

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SIGNIN_STYLE = "/w/_broker/broker.css"  # the one portal file the device origin serves


def _base(ctx: Context, sessions: LiveSessions | None, middlewares: list[object]
          ) -> web.Application:
    settings = ctx.config.settings
    app = web.Application(middlewares=middlewares,  # type: ignore[arg-type]
                          client_max_size=settings.http.max_body)
    app[CONTEXT] = ctx
    app[LIVE_SESSIONS] = sessions if sessions is not None else LiveSessions()
    app[SECRET] = load_secret_bytes(KeyPaths.of(ctx.config).web_key, "the web secret key")
    app[REFUSALS] = RefusalLog(ctx)
    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)

    async def flush(app: web.Application) -> None:
        await app[REFUSALS].flush()

    app.on_cleanup.append(flush)
    return app


def create_app(ctx: Context, sessions: LiveSessions | None = None) -> web.Application:
    """The portal: staff UI, approval pages, API. Never device content."""
    public = ctx.config.settings.broker.public_url
    app = _base(ctx, sessions, [security_headers, error_pages,
                                same_origin_writes(lambda request: public)])
    aiohttp_jinja2.get_env(app).globals["static"] = lambda name: f"/static/{name}"
    app.router.add_get("/healthz", healthz)
    app.router.add_static("/static/", STATIC)
    api.setup(app)
    staff.setup(app)
    approval_pages.setup(app)
    app.router.add_route("*", "/w/{tail:.*}", to_device_origin)
    return app


def create_device_app(ctx: Context, sessions: LiveSessions | None = None) -> web.Application:
    """The device origin: the web proxy and its sign-in page, and nothing of the portal."""
    app = _base(ctx, sessions, [security_headers, error_pages, no_device_addresses])
    aiohttp_jinja2.get_env(app).globals["static"] = lambda name: SIGNIN_STYLE
    app.router.add_get(SIGNIN_STYLE, signin_style)
    webproxy.setup(app)
    return app


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
