"""The vendor contact's pages under ``/vendor/`` (no staff account involved).

* ``/vendor/login``: the contact gives their address; if it is an enabled vendor's contact a
  sign-in link is e-mailed (the page says the same either way). The form's CSRF token is
  bound to a pre-sign-in cookie.
* ``/vendor/login/{token}``: GET shows a button and changes nothing (mail scanners open
  links); POST (CSRF bound to the link) spends it and opens the session cookie
  ``broker_vendor`` (HttpOnly, SameSite=Strict, ``__Host-`` over TLS).
* ``/vendor/``: the contact's own vendor's technicians (state, last use, expiry), each
  with Disable (POST, CSRF bound to the session). Another vendor's technician, an unknown
  name, a missing session or a bad token: refused and audited, never shown.
"""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from broker.domain import invitations as rules
from broker.domain.invitations import LinkRefused
from broker.errors import Conflict, NotFound
from broker.http.keys import CONTEXT, REFUSALS
from broker.http.onboarding import PAGES
from broker.http.ratelimit import RateLimit
from broker.http.security import csrf_ok, csrf_token
from broker.http.staff.auth import clear_cookie, cookie_name, redirect, set_cookie
from broker.services import vendor_contacts as contacts
from broker.services.vendor_contacts import ContactSession

COOKIE = "broker_vendor"
PRE_COOKIE = "broker_vendor_pre"
ASK_LIMIT = web.AppKey("vendor_ask_limit", RateLimit)  # each ask may send a mail
LINK_LIMIT = web.AppKey("vendor_link_limit", RateLimit)
PAGE_LIMIT = web.AppKey("vendor_page_limit", RateLimit)
HOME = "/vendor/"
MAX_EMAIL = 320
LINK_PAGES = {
    **PAGES,
    rules.USED: (409, "This sign-in link has already been used: ask for a new one."),
    rules.EXPIRED: (410, "This sign-in link has expired (links work for 15 minutes): ask for"
                         " a new one."),
    rules.TAMPERED: (403, "This sign-in link is not valid. Use the link exactly as it was"
                          " sent to you, or ask for a new one."),
    rules.MALFORMED: (400, "This sign-in link is damaged or incomplete. Ask for a new one."),
    rules.WITHDRAWN: (403, "This sign-in link no longer works: the address is not the"
                           " vendor's contact any more, or the vendor's access is disabled."),
}


def setup(app: web.Application) -> None:
    app[ASK_LIMIT] = RateLimit(per_minute=6, burst=8)
    app[LINK_LIMIT] = RateLimit(per_minute=10, burst=6)
    app[PAGE_LIMIT] = RateLimit(per_minute=60, burst=30)
    app.router.add_get("/vendor/", home)
    app.router.add_get("/vendor/login", login_page)
    app.router.add_post("/vendor/login", login_submit)
    app.router.add_get("/vendor/login/{token}", link_page)
    app.router.add_post("/vendor/login/{token}", link_submit)
    app.router.add_post("/vendor/technicians/{name}/disable", disable)
    app.router.add_post("/vendor/logout", logout)


async def _refuse(request: web.Request, actor: str, status: int, reason: str,
                  message: str, **data: Any) -> web.Response:
    client = request.remote or "unknown"
    await request.app[REFUSALS].refused("vendor.refused", actor[:200], client, None,
                                        status=status, reason=reason, method=request.method,
                                        path=request.path[:200], **data)
    return aiohttp_jinja2.render_template("error.html", request,
                                          {"status": status, "message": message},
                                          status=status)


async def _session(request: web.Request) -> ContactSession | None:
    return await contacts.session_of(request.app[CONTEXT],
                                     request.cookies.get(cookie_name(request, COOKIE)))


# -- asking for a link -----------------------------------------------------------------------
async def login_page(request: web.Request) -> web.StreamResponse:
    request.app[PAGE_LIMIT].enforce(request)
    pre = request.cookies.get(cookie_name(request, PRE_COOKIE))
    fresh = not pre or len(pre) != 32
    if fresh:
        pre = secrets.token_hex(16)
    assert pre is not None
    response = aiohttp_jinja2.render_template("vendor_login.html", request, {
        "csrf": csrf_token(request.app, f"vendor-pre:{pre}"), "sent": False})
    if fresh:
        set_cookie(request, response, PRE_COOKIE, pre)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    request.app[ASK_LIMIT].enforce(request)
    form = await request.post()
    pre = request.cookies.get(cookie_name(request, PRE_COOKIE)) or ""
    if not pre or not csrf_ok(request.app, f"vendor-pre:{pre}", form.get("csrf")):
        return await _refuse(request, "anonymous", 403, "csrf token",
                             "The form did not carry a valid security token: reload the page"
                             " and try again.")
    email = form.get("email")
    text = email.strip() if isinstance(email, str) else ""
    if not text or len(text) > MAX_EMAIL or "@" not in text:
        return aiohttp_jinja2.render_template("vendor_login.html", request, {
            "csrf": csrf_token(request.app, f"vendor-pre:{pre}"), "sent": False,
            "error": "e-mail: give the address the hospital has for your company"},
            status=400)
    await contacts.request_link(request.app[CONTEXT], text, request.remote or "unknown")
    return aiohttp_jinja2.render_template("vendor_login.html", request, {
        "csrf": "", "sent": True})


# -- spending it -----------------------------------------------------------------------------
async def link_page(request: web.Request) -> web.StreamResponse:
    request.app[PAGE_LIMIT].enforce(request)
    token = request.match_info["token"]
    return aiohttp_jinja2.render_template("vendor_signin.html", request, {
        "csrf": csrf_token(request.app, f"vendor-link:{token}")})


async def link_submit(request: web.Request) -> web.StreamResponse:
    request.app[LINK_LIMIT].enforce(request)
    token = request.match_info["token"]
    form = await request.post()
    client = request.remote or "unknown"
    if not csrf_ok(request.app, f"vendor-link:{token}", form.get("csrf")):
        return await _refuse(request, f"link:{client}", 403, "csrf token",
                             LINK_PAGES["csrf token"][1])
    try:
        cookie, _ = await contacts.spend_link(request.app[CONTEXT], token, client)
    except LinkRefused as exc:
        status, message = LINK_PAGES.get(exc.reason, (403, exc.reason))
        return await _refuse(request, f"link:{client}", status, exc.reason, message,
                             login=token.partition(".")[0][:10])
    response = redirect(HOME)
    set_cookie(request, response, COOKIE, cookie)
    return response


# -- the vendor's page -------------------------------------------------------------------
async def home(request: web.Request) -> web.StreamResponse:
    request.app[PAGE_LIMIT].enforce(request)
    who = await _session(request)
    if who is None:
        raise web.HTTPSeeOther("/vendor/login")
    rows = await contacts.technicians(request.app[CONTEXT], who)
    done = request.query.get("disabled", "")
    return aiohttp_jinja2.render_template("vendor_home.html", request, {
        "who": who, "rows": rows, "csrf": csrf_token(request.app, f"vendor:{who.csrf_binding}"),
        "notice": f"{done} is disabled: their live sessions are being cut."
        if done and done in {r.name for r in rows} else None})


async def _guard(request: web.Request) -> ContactSession | web.Response:
    who = await _session(request)
    if who is None:
        return await _refuse(request, "anonymous", 401, "not signed in",
                             "Sign in first: /vendor/login")
    form = await request.post()
    if not csrf_ok(request.app, f"vendor:{who.csrf_binding}", form.get("csrf")):
        return await _refuse(request, who.actor, 403, "csrf token",
                             "The form did not carry a valid security token: reload the page"
                             " and try again.")
    return who


async def disable(request: web.Request) -> web.StreamResponse:
    request.app[PAGE_LIMIT].enforce(request)
    who = await _guard(request)
    if isinstance(who, web.Response):
        return who
    name = request.match_info["name"]
    try:
        await contacts.disable(request.app[CONTEXT], who, name)
    except NotFound as exc:
        return aiohttp_jinja2.render_template("error.html", request,
                                              {"status": 404, "message": str(exc)}, status=404)
    except Conflict:
        pass  # already disabled: the page shows it so
    return redirect(f"{HOME}?disabled={name}")


async def logout(request: web.Request) -> web.StreamResponse:
    who = await _guard(request)
    if isinstance(who, web.Response):
        return who
    await contacts.sign_out(request.app[CONTEXT], who)
    response = redirect("/vendor/login")
    clear_cookie(request, response, COOKIE)
    return response
