"""The aiohttp application: middlewares, templates, static files, and each feature's routes.

Features add themselves with a ``setup(app)`` function called from :func:`create_app`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import jinja2
from aiohttp import web

import broker.http.approvals as approval_pages
from broker import webproxy
from broker.credentials.keys import KeyPaths, load_secret_bytes
from broker.domain.durations import format_duration
from broker.http import api, staff
from broker.http.errors import error_pages
from broker.http.keys import CONTEXT, LIVE_SESSIONS, NODE, SECRET
from broker.http.security import security_headers
from broker.http.times import time_filter
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.readiness import NodeState, readiness

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def create_app(ctx: Context, sessions: LiveSessions | None = None,
               node: NodeState | None = None) -> web.Application:
    settings = ctx.config.settings
    app = web.Application(middlewares=[security_headers, error_pages],
                          client_max_size=settings.http.max_body)
    app[CONTEXT] = ctx
    app[LIVE_SESSIONS] = sessions if sessions is not None else LiveSessions()
    app[NODE] = node if node is not None else NodeState()
    app[SECRET] = load_secret_bytes(KeyPaths.of(ctx.config).web_key, "the web secret key")
    aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined)
    env = aiohttp_jinja2.get_env(app)
    env.globals["static"] = lambda name: f"/static/{name}"
    env.filters["duration"] = lambda seconds: format_duration(timedelta(seconds=int(seconds)))
    env.filters["fields"] = data_fields
    env.filters["when"] = time_filter(ZoneInfo(settings.broker.timezone))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_static("/static/", STATIC)
    api.setup(app)
    staff.setup(app)
    approval_pages.setup(app)
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


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "node": request.app[CONTEXT].node})
