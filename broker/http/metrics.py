"""``GET /metrics``: the Prometheus text exposition of :mod:`broker.metrics`.

Served on the portal's listener, or, when ``[metrics] listen`` is set, on a listener of its
own (:func:`create_metrics_app`; the portal then does not serve it). With ``[metrics]
token_env`` or ``token_file`` set, a request needs ``Authorization: Bearer TOKEN`` (compared in
constant time; never a staff login); a missing or wrong token is a 401 and an audited
refusal (``metrics.refused``) through the app's RefusalLog.
"""

from __future__ import annotations

import hmac
import os

import structlog
from aiohttp import web

from broker import metrics
from broker.config import Config
from broker.errors import ConfigError
from broker.http.keys import CONTEXT, LIVE_SESSIONS, REFUSALS
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.refusals import RefusalLog

TOKEN = web.AppKey("metrics_token", bytes)  # empty: no token required
MIN_TOKEN = 16  # characters: a shorter token is a configuration mistake
log = structlog.get_logger("broker.metrics")


def metrics_token(config: Config) -> bytes:
    """The bearer token ``[metrics]`` names (empty: none required); a ConfigError naming the
    key if it names one that is missing, empty or too short."""
    section = config.settings.metrics
    if section.token_env:
        value = os.environ.get(section.token_env, "").strip()
        where = (f"[metrics] token_env = {section.token_env!r}: the environment variable"
                 f" {section.token_env}")
        if not value:
            raise ConfigError(f"{config.source}: {where} is not set or empty")
    elif section.token_file:
        path = config.path(section.token_file)
        where = f"[metrics] token_file = {section.token_file!r}: {path}"
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config.source}: {where}: cannot read it"
                              f" ({getattr(exc, 'strerror', None) or exc})") from None
        if not value:
            raise ConfigError(f"{config.source}: {where} is empty")
    else:
        return b""
    if len(value) < MIN_TOKEN:
        raise ConfigError(f"{config.source}: {where} holds a token shorter than {MIN_TOKEN}"
                          " characters")
    return value.encode("utf-8")


def setup(app: web.Application, *, portal: bool = True) -> None:
    """Add ``GET /metrics`` to an app that has CONTEXT, LIVE_SESSIONS and REFUSALS."""
    app[TOKEN] = metrics_token(app[CONTEXT].config)
    if portal and not app[TOKEN]:
        log.info("GET /metrics is served on the portal without a token; set [metrics]"
                 " token_env or token_file, or [metrics] listen, if the portal is reachable"
                 " beyond the monitoring network")
    app.router.add_get("/metrics", serve_metrics)


def create_metrics_app(ctx: Context, sessions: LiveSessions) -> web.Application:
    """The app of ``[metrics] listen``: ``/metrics`` and nothing else."""
    app = web.Application()
    app[CONTEXT] = ctx
    app[LIVE_SESSIONS] = sessions
    app[REFUSALS] = RefusalLog(ctx, burst=20)
    app.on_cleanup.append(_flush_refusals)
    setup(app, portal=False)
    return app


async def _flush_refusals(app: web.Application) -> None:
    try:
        await app[REFUSALS].flush()
    except Exception:
        log.exception("refusal counts not written")


async def serve_metrics(request: web.Request) -> web.Response:
    token = request.app[TOKEN]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        presented = given.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(presented, token):
            await request.app[REFUSALS].refused(
                "metrics.refused", "anonymous", request.remote or "unknown", None,
                reason="wrong token" if presented else "no token", path=request.path[:200])
            raise web.HTTPUnauthorized(
                text="a bearer token is required for /metrics\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"',
                         "Cache-Control": "no-store"})
    sessions: LiveSessions = request.app[LIVE_SESSIONS]
    await metrics.refresh(request.app[CONTEXT], sessions)
    return web.Response(body=metrics.exposition(),
                        headers={"Content-Type": metrics.CONTENT_TYPE,
                                 "Cache-Control": "no-store"})
