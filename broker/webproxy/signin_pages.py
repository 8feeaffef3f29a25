"""The device origin's sign-in pages, and the checks every device-origin request goes
through: which origin it is on (with ``[webproxy] grant_host``, the Host header must name the
grant) and what a device failure shows the browser (its broker name, never its address).

    GET  /w/signin/<token>   the one-time link's page; sets a pre-session cookie that the
                             form's CSRF token is bound to
    POST /w/signin/<token>   only from that page (same origin, that cookie, that token):
                             redeems the link and sets the grant's cookie
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import NoReturn

import aiohttp_jinja2
from aiohttp import web

from broker.config import Settings
from broker.errors import BrokerError, SessionRefused
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT, LIVE_SESSIONS, NODE, REFUSALS
from broker.http.security import csrf_ok, csrf_token, foreign_source, refuse_foreign
from broker.services.context import Context
from broker.services.device_web import load_target
from broker.services.readiness import new_session_refusal
from broker.services.sessions import audit_event
from broker.services.web_signin import digest, peek, redeem
from broker.webproxy.live import ProxiedSession, unavailable
from broker.webproxy.origin import (
    device_base_url,
    grant_of_host,
    grant_origin,
    weblogin_command,
    without_addresses,
)

COOKIE = "broker_web"
PRE_COOKIE = "broker_web_signin"  # binds the sign-in form's CSRF token to this browser
SIGNIN_PATH = "/w/signin/"
WEB_SESSIONS = web.AppKey("web_sessions", dict[str, ProxiedSession])


# -- which origin ----------------------------------------------------------------------------
def _settings(request: web.Request) -> Settings:
    return request.app[CONTEXT].config.settings


async def on_grant_host(request: web.Request, grant_id: int | None) -> None:
    """With ``grant_host``, the Host header must name ``grant_id`` (for the sign-in, the
    grant of its link): another grant's host is refused, the shared host redirects."""
    settings = _settings(request)
    if not settings.webproxy.grant_host:
        return
    if grant_id is None:  # the sign-in: its link names the grant
        view = await peek(request.app[CONTEXT], request.match_info["token"])
        if view is None:
            raise web.HTTPForbidden(text=_invalid_link(request))
        grant_id = view.grant.id or 0
    named = grant_of_host(settings, request.host)
    if named == grant_id:
        return
    if named is None and request.method in ("GET", "HEAD"):
        raise web.HTTPFound(grant_origin(settings, grant_id) + request.raw_path)
    await refuse_foreign(request, f"Host {request.host[:200]!r} is not grant {grant_id}'s",
                         "web.grant_host_refused")


def own_url(request: web.Request, grant_id: int | None) -> str:
    settings = _settings(request)
    if grant_id is not None and settings.webproxy.grant_host:
        return grant_origin(settings, grant_id)
    return device_base_url(settings)


# -- sign-in ---------------------------------------------------------------------------------
def _binding(token: str, nonce: str) -> str:
    return f"web-signin:{digest(token)}:{nonce}"


def _secure(request: web.Request) -> bool:
    return request.secure or device_base_url(_settings(request)).startswith("https:")


async def signin_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    view = await peek(request.app[CONTEXT], token)
    if view is None:
        raise web.HTTPForbidden(text=_invalid_link(request))
    nonce = request.cookies.get(PRE_COOKIE, "")
    if not 20 <= len(nonce) <= 100:
        nonce = secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template("webproxy_signin.html", request, {
        "view": view, "csrf": csrf_token(request.app, _binding(token, nonce)),
        "action": f"{SIGNIN_PATH}{token}"})
    response.set_cookie(PRE_COOKIE, nonce, path=SIGNIN_PATH, httponly=True,
                        samesite="Strict", secure=_secure(request), max_age=15 * 60)
    return response


async def signin_post(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    token = request.match_info["token"]
    foreign = foreign_source(request, own_url(request, None))
    if foreign is not None:
        await refuse_foreign(request, foreign, "web.signin_cross_origin_refused")
    form = await request.post()
    nonce = request.cookies.get(PRE_COOKIE, "")
    if not nonce or not csrf_ok(request.app, _binding(token, nonce), form.get("csrf")):
        await request.app[REFUSALS].refused(
            "web.signin_csrf_refused", f"web:{request.remote or 'unknown'}",
            request.remote or "unknown", None, reason="missing or wrong CSRF token or"
            " sign-in cookie")
        raise BadInput("csrf", "this form was not sent from the sign-in page; open the"
                               " sign-in link again", 403)
    client = request.remote or "unknown"
    await refuse_new_session(request)  # before the one-use link is spent
    row, cookie, view = await redeem(ctx, token, client)
    try:
        target = await load_target(ctx, view.device.id or 0)
    except BrokerError as exc:
        await device_failure(ctx, view.device.name, view.technician.name, client, exc)
    live = ProxiedSession(ctx, request.app[LIVE_SESSIONS], row, view.technician, view.device,
                          view.grant, target, client)
    await start_session(request, live)
    sessions = request.app[WEB_SESSIONS]
    for key in [k for k, s in sessions.items() if s.closing is not None]:
        del sessions[key]
    sessions[row.cookie_hash] = live
    response = web.HTTPSeeOther(live.prefix)
    _set_cookie(request, response, live, cookie)
    response.del_cookie(PRE_COOKIE, path=SIGNIN_PATH, secure=_secure(request), httponly=True,
                        samesite="Strict")
    raise response


async def start_session(request: web.Request, live: ProxiedSession) -> None:
    """Open the session, or answer 503 with its one line (the node began draining, or its
    recordings stopped taking writes, since the check before the sign-in)."""
    try:
        await live.start()
    except SessionRefused as exc:
        await request.app[REFUSALS].refused(
            "session.refused", f"technician:{live.technician}", request.remote or "unknown",
            live.device, reason=exc.reason)
        raise unavailable(str(exc)) from None


async def refuse_new_session(request: web.Request) -> None:
    """503 with one line while this node opens no new session (draining, recordings not
    writable)."""
    why = await new_session_refusal(request.app[CONTEXT], request.app[NODE])
    if why is not None:
        await request.app[REFUSALS].refused(
            "session.refused", f"web:{request.remote or 'unknown'}",
            request.remote or "unknown", None, reason=why)
        raise unavailable(why)


def _set_cookie(request: web.Request, response: web.StreamResponse, live: ProxiedSession,
                cookie: str) -> None:
    remaining = max(1, int((live.ends_at - live.ctx.now()).total_seconds()))
    response.set_cookie(COOKIE, cookie, path=live.prefix, httponly=True, samesite="Strict",
                        secure=_secure(request),
                        max_age=min(remaining, int(timedelta(days=1).total_seconds())))


async def device_failure(ctx: Context, device: str, technician: str, client: str,
                          exc: BaseException) -> NoReturn:
    """The device could not be used: the details (which may name its address) go to the
    audit log; the browser is told the device's broker name and the reason, with every
    address taken out."""
    await audit_event(ctx, "web.device_failed", f"technician:{technician}", device,
                      client=client, error=f"{exc.__class__.__name__}: {exc}"[:500])
    raise web.HTTPBadGateway(text=f"{device}'s web interface could not be used:"
                                  f" {without_addresses(str(exc))} (details in the broker's"
                                  " audit log)")


def _invalid_link(request: web.Request) -> str:
    return ("this sign-in link is not valid (already used, expired or mistyped); ask for a new"
            " one with: " + weblogin_command(request.app[CONTEXT].config.settings))
