"""Signing in and out, and the guard every staff route goes through.

Login is a password form, then (when the account has enrolled) a TOTP form, or single
sign-on with the hospital's OpenID Connect provider (:mod:`.oidc`; ``[oidc] local_login =
false`` removes the password form and refuses its POST). Failures all
say the same thing to the visitor and each is an audit event with the real reason; both
forms are rate-limited per client address. The session cookie is HttpOnly, SameSite=Strict,
Path=/, and over TLS ``Secure`` with the ``__Host-`` prefix (so no subdomain can set it).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from broker import metrics
from broker.http.keys import CONTEXT, REFUSALS
from broker.http.ratelimit import RateLimit
from broker.http.security import csrf_ok, csrf_token
from broker.services import staff_logins as logins
from broker.services.context import Context
from broker.services.staff_accounts import check_password, check_totp, may
from broker.services.staff_logins import SignedIn
from broker.services.staff_roles import RoleRefused, apply_directory_role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SESSION_COOKIE = "broker_session"
LOGIN_COOKIE = "broker_login"  # binds the login form's CSRF token before anyone signs in
GENERIC_FAILURE = "Sign-in failed: wrong name, password or code, or the account is disabled."
LOGIN_LIMIT = web.AppKey("staff_login_limit", RateLimit)
SIGNED_IN = web.RequestKey("staff_signed_in", SignedIn)
HOME = "/staff/"
MAX_FIELD = 1024


def _context(request: web.Request) -> Context:
    return request.app[CONTEXT]


def secure_cookies(request: web.Request) -> bool:
    """Secure cookies when the browser talks TLS: to this listener, or to a TLS-terminating
    proxy in front of a plain-HTTP listener (no certificate set, an https public URL)."""
    if request.secure:
        return True
    settings = _context(request).config.settings
    return not settings.http.tls_cert and settings.broker.public_url.startswith("https://")


def cookie_name(request: web.Request, base: str) -> str:
    return f"__Host-{base}" if secure_cookies(request) else base


def set_cookie(request: web.Request, response: web.StreamResponse, base: str,
               value: str) -> None:
    response.set_cookie(cookie_name(request, base), value, path="/", httponly=True,
                        samesite="Strict", secure=secure_cookies(request))


def clear_cookie(request: web.Request, response: web.StreamResponse, base: str) -> None:
    response.del_cookie(cookie_name(request, base), path="/", secure=secure_cookies(request),
                        httponly=True, samesite="Strict")


async def current(request: web.Request, *, pending: bool = False) -> SignedIn | None:
    """The signed-in staff member (``pending``: the session waiting for its TOTP code)."""
    who = await logins.find(_context(request),
                            request.cookies.get(cookie_name(request, SESSION_COOKIE)))
    if who is None or who.session.mfa_pending != pending:
        return None
    return who


def signed_in(request: web.Request) -> SignedIn:
    return request[SIGNED_IN]  # KeyError: the route is not guarded by requires()


def csrf_for(request: web.Request, who: SignedIn) -> str:
    return csrf_token(request.app, f"staff:{who.session.csrf_binding}")


async def refused(request: web.Request, actor: str, status: int, reason: str,
                  **data: object) -> None:
    """Audit one refusal of a staff route (rate-limited per address by the app's
    RefusalLog, so a flood is a bounded number of rows and a count)."""
    await request.app[REFUSALS].refused("staff.refused", actor, _address(request), None,
                                        status=status, reason=reason, method=request.method,
                                        path=request.path[:200], **data)


async def check_csrf(request: web.Request, binding: str, actor: str = "anonymous") -> None:
    form = await request.post()
    if not csrf_ok(request.app, binding, form.get("csrf")):
        await refused(request, actor, 403, "csrf token")
        raise web.HTTPForbidden(text="the form's security token is missing or wrong: "
                                     "reload the page and try again")


def requires(permission: str) -> Callable[[Handler], Handler]:
    """Guard a route: signed in (else to the login page), allowed by the role (else 403),
    and on POST a valid CSRF token (else 403)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            who = await current(request)
            if who is None:
                if request.method == "GET":
                    raise web.HTTPSeeOther(f"/staff/login?next={quote(request.path_qs)}")
                await refused(request, "anonymous", 401, "not signed in")
                raise web.HTTPUnauthorized(text="sign in first")
            actor = f"staff:{who.user.name}"
            if not may(who.user.role, permission):
                await refused(request, actor, 403, "role", role=who.user.role,
                              permission=permission)
                raise web.HTTPForbidden(
                    text=f"the {who.user.role} role may not use this page ({permission})")
            if request.method == "POST":
                await check_csrf(request, f"staff:{who.session.csrf_binding}", actor)
            request[SIGNED_IN] = who
            return await handler(request)

        return guarded

    return wrap


def redirect(location: str) -> web.Response:
    """A 303 to ``location`` as a response (so that cookies can be set on it)."""
    return web.Response(status=303, headers={"Location": location})


def safe_next(target: str | None) -> str:
    """Only a path inside the staff UI: never another site (``//evil``, ``https:``)."""
    if target and target.startswith("/staff/") and not target.startswith("//") \
            and "\\" not in target and "\n" not in target and "\r" not in target:
        return target
    return HOME


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def _audit(request: web.Request, kind: str, name: str, **data: object) -> None:
    if kind == "staff.login_failed":
        metrics.AUTH_FAILURES.labels("staff").inc()
    ctx = _context(request)
    await ctx.audit_alone(kind, f"staff:{name[:63]}", f"staff:{name[:63]}",
                          address=_address(request), **data)


# -- the password step ------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    if await current(request) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return _login_form(request, request.query.get("next"), None, 200)


def _login_form(request: web.Request, target: str | None, error: str | None,
                status: int) -> web.StreamResponse:
    nonce = request.cookies.get(cookie_name(request, LOGIN_COOKIE))
    if not nonce or len(nonce) > 100:
        nonce = secrets.token_urlsafe(24)
    oidc = _context(request).config.settings.oidc
    response = aiohttp_jinja2.render_template(
        "staff/login.html", request,
        {"csrf": csrf_token(request.app, f"login:{nonce}"), "next": safe_next(target),
         "error": error, "local_login": oidc.local_login,
         "sso": oidc.display_name if oidc.issuer else None,
         "sso_start": f"/staff/oidc/start?next={quote(safe_next(target))}"}, status=status)
    set_cookie(request, response, LOGIN_COOKIE, nonce)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    request.app[LOGIN_LIMIT].enforce(request)
    if not _context(request).config.settings.oidc.local_login:
        await refused(request, "anonymous", 403, "local login disabled", step="login")
        raise web.HTTPForbidden(text="local sign-in is switched off: sign in with the "
                                     "identity provider")
    form = await request.post()
    nonce = request.cookies.get(cookie_name(request, LOGIN_COOKIE), "")
    target = str(form.get("next") or "")
    if not nonce or not csrf_ok(request.app, f"login:{nonce}", form.get("csrf")):
        await refused(request, "anonymous", 403, "csrf token", step="login")
        return _login_form(request, target, "The sign-in form expired; please try again.", 403)
    name, password = str(form.get("name") or "").strip(), str(form.get("password") or "")
    if not name or not password or len(name) > MAX_FIELD or len(password) > MAX_FIELD:
        await _audit(request, "staff.login_failed", name or "-", reason="name or password empty"
                     if not name or not password else "input too long")
        return _login_form(request, target, GENERIC_FAILURE, 401)
    ctx = _context(request)
    result = await check_password(ctx, name, password)
    if result.user is None:
        await _audit(request, "staff.login_failed", name, reason=result.reason, step="password")
        return _login_form(request, target, GENERIC_FAILURE, 401)
    try:  # [ldap.roles]: the directory says which role the account has now
        user = await apply_directory_role(ctx, result.user)
    except RoleRefused as exc:
        await _audit(request, "staff.login_failed", name, reason=str(exc), step="directory")
        return _login_form(request, target, GENERIC_FAILURE, 401)
    mfa = user.totp_secret is not None
    await logins.purge_expired(ctx)
    token = await logins.start(ctx, user, _address(request), mfa_pending=mfa)
    if mfa:
        response = redirect(f"/staff/login/totp?next={quote(safe_next(target))}")
    else:
        await _audit(request, "staff.login_succeeded", user.name, role=user.role, mfa=False)
        response = redirect(safe_next(target))
    set_cookie(request, response, SESSION_COOKIE, token)
    clear_cookie(request, response, LOGIN_COOKIE)
    return response


# -- the TOTP step ----------------------------------------------------------------------


async def totp_page(request: web.Request) -> web.StreamResponse:
    pending = await current(request, pending=True)
    if pending is None:
        raise web.HTTPSeeOther("/staff/login")
    return _totp_form(request, pending, request.query.get("next"), None, 200)


def _totp_form(request: web.Request, pending: SignedIn, target: str | None,
               error: str | None, status: int) -> web.StreamResponse:
    return aiohttp_jinja2.render_template(
        "staff/totp.html", request,
        {"csrf": csrf_for(request, pending), "next": safe_next(target), "error": error},
        status=status)


async def totp_submit(request: web.Request) -> web.StreamResponse:
    request.app[LOGIN_LIMIT].enforce(request)
    pending = await current(request, pending=True)
    if pending is None:
        raise web.HTTPSeeOther("/staff/login")
    await check_csrf(request, f"staff:{pending.session.csrf_binding}",
                     f"staff:{pending.user.name}")
    form = await request.post()
    target = str(form.get("next") or "")
    ctx = _context(request)
    reason = await check_totp(ctx, pending.user.id or 0, str(form.get("code") or "")[:64])
    if reason is not None:
        await _audit(request, "staff.login_failed", pending.user.name, reason=reason,
                     step="totp")
        return _totp_form(request, pending, target, GENERIC_FAILURE, 401)
    token = await logins.complete_mfa(ctx, pending, _address(request))
    await _audit(request, "staff.login_succeeded", pending.user.name, role=pending.user.role,
                 mfa=True)
    response = redirect(safe_next(target))
    set_cookie(request, response, SESSION_COOKIE, token)
    return response


# -- signing out ------------------------------------------------------------------------


async def logout(request: web.Request) -> web.StreamResponse:
    who = await current(request) or await current(request, pending=True)
    if who is not None:
        await check_csrf(request, f"staff:{who.session.csrf_binding}", f"staff:{who.user.name}")
        await logins.end(_context(request), who.session)
        await _audit(request, "staff.logout", who.user.name)
    response = redirect("/staff/login")
    clear_cookie(request, response, SESSION_COOKIE)
    return response


def setup(app: web.Application) -> None:
    app[LOGIN_LIMIT] = RateLimit(per_minute=10, burst=10)
    app.router.add_get("/staff/login", login_page)
    app.router.add_post("/staff/login", login_submit)
    app.router.add_get("/staff/login/totp", totp_page)
    app.router.add_post("/staff/login/totp", totp_submit)
    app.router.add_post("/staff/logout", logout)
