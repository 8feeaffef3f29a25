"""The technician's onboarding page behind an invitation link (public: no staff login).

``GET /onboard/{token}`` shows the form and changes nothing (mail scanners open links);
``POST /onboard/{token}`` (CSRF token bound to the link) takes the chosen user name and one
SSH public key, pasted or uploaded, and creates the technician pending approval. A bad name or
key answers the form again with one line saying what to fix, and leaves the link unspent; a
used, expired, tampered or withdrawn link is a page of its own and an ``invitation.refused``
audit event (through the app's RefusalLog, so a flood is a bounded number of rows). Both
routes are rate-limited per client address.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import segno
from aiohttp import BodyPartReader, web

from broker.domain import invitations as rules
from broker.domain.invitations import LinkRefused
from broker.errors import Conflict, UsageError
from broker.http.keys import CONTEXT, REFUSALS
from broker.http.ratelimit import RateLimit
from broker.http.security import csrf_ok, csrf_token
from broker.services import invitation_totp
from broker.services.invitations import MAX_KEY_TEXT, Invitations, InvitationView

VIEW_LIMIT = web.AppKey("onboard_view_limit", RateLimit)
SUBMIT_LIMIT = web.AppKey("onboard_submit_limit", RateLimit)
CSRF = "csrf token"
PAGES: dict[str, tuple[int, str]] = {
    rules.USED: (409, "This invitation link has already been used: each link enrols one"
                      " technician once. Ask the hospital for a new invitation if you need"
                      " one."),
    rules.EXPIRED: (410, "This invitation link has expired. Ask the hospital for a new"
                         " invitation."),
    rules.TAMPERED: (403, "This invitation link is not valid: it was changed or never"
                          " issued. Use the link exactly as it was sent to you."),
    rules.MALFORMED: (400, "This invitation link is damaged or incomplete. Use the link"
                           " exactly as it was sent to you."),
    rules.WITHDRAWN: (403, "This invitation was withdrawn: the hospital took it back, or the"
                           " vendor's access is disabled or its contract has ended."),
    rules.WRONG_DOMAIN: (403, "This invitation's address is no longer in the vendor's mail"
                              " domains. Ask the hospital for a new invitation."),
    CSRF: (403, "The form did not carry a valid security token. Open the link again and"
                " submit the form from that page."),
}


def setup(app: web.Application) -> None:
    app[VIEW_LIMIT] = RateLimit(per_minute=30, burst=20)
    app[SUBMIT_LIMIT] = RateLimit(per_minute=10, burst=6)
    app.router.add_get("/onboard/{token}", show)
    app.router.add_post("/onboard/{token}", submit)
    app.router.add_post("/onboard/{token}/totp", confirm_totp)


def _service(request: web.Request) -> Invitations:
    return Invitations(request.app[CONTEXT], f"link:{request.remote or 'unknown'}")


async def show(request: web.Request) -> web.StreamResponse:
    request.app[VIEW_LIMIT].enforce(request)
    token = request.match_info["token"]
    try:
        view = await _service(request).open(token)
    except LinkRefused as exc:
        return await _refuse(request, exc.reason, token)
    return _form(request, view, token, view.invitation.name
                 or rules.suggested_name(view.invitation.email), "", None)


async def submit(request: web.Request) -> web.StreamResponse:
    request.app[SUBMIT_LIMIT].enforce(request)
    token = request.match_info["token"]
    service = _service(request)
    try:
        view = await service.open(token)
    except LinkRefused as exc:
        return await _refuse(request, exc.reason, token)
    try:
        form = await _read_form(request)
    except UsageError as exc:
        return _form(request, view, token, "", "", str(exc), status=400)
    if not csrf_ok(request.app, f"onboard:{token}", form.get("csrf")):
        return await _refuse(request, CSRF, token)
    name, key = form.get("name", "").strip(), form.get("key", "").strip()
    if form.get("keyfile", "").strip():
        key = form["keyfile"].strip()
    if not name:
        return _form(request, view, token, name, key, "user name: choose one", status=400)
    if not key:
        return _form(request, view, token, name, key,
                     "public key: paste it or choose the .pub file", status=400)
    try:
        tech = await service.complete(token, name, key)
    except LinkRefused as exc:
        return await _refuse(request, exc.reason, token)
    except (UsageError, Conflict) as exc:
        return _form(request, view, token, name, key, str(exc),
                     status=409 if isinstance(exc, Conflict) else 400)
    enrolled = await invitation_totp.enrol(request.app[CONTEXT], token)
    return _done(request, token, tech.name, view.vendor, enrolled)


def _done(request: web.Request, token: str, name: str, vendor: str,
          enrolled: tuple[str, str] | None, *, confirming: bool = False,
          confirmed: bool = False, error: str | None = None,
          status: int = 200) -> web.Response:
    public = request.app[CONTEXT].config.settings.broker.public_url
    data: dict[str, Any] = {
        "name": name, "vendor": vendor, "host": urlsplit(public).hostname,
        "totp": confirming or enrolled is not None, "confirmed": confirmed, "error": error,
        "csrf": csrf_token(request.app, f"onboard:{token}"), "secret": None, "qr": None,
        "action": f"/onboard/{token}/totp"}
    if enrolled is not None:
        secret, uri = enrolled
        data.update(secret=secret, qr=segno.make(uri, error="m").svg_data_uri(scale=5))
    return aiohttp_jinja2.render_template("onboard_done.html", request, data, status=status)


async def confirm_totp(request: web.Request) -> web.StreamResponse:
    """One code from the new authenticator (the link's own CSRF binding)."""
    request.app[SUBMIT_LIMIT].enforce(request)
    token = request.match_info["token"]
    form = await request.post()
    if not csrf_ok(request.app, f"onboard:{token}", form.get("csrf")):
        return await _refuse(request, CSRF, token)
    code = form.get("code")
    ctx = request.app[CONTEXT]
    try:
        ok = await invitation_totp.confirm(ctx, token, code if isinstance(code, str) else "")
        view = await _service(request).enrolled(token)
    except LinkRefused as exc:
        return await _refuse(request, exc.reason, token)
    return _done(request, token, view.technician or "", view.vendor, None, confirming=True,
                 confirmed=ok, error=None if ok else "That code is not right (or was used"
                 " already): type the newest code your authenticator shows.",
                 status=200 if ok else 400)


async def _read_form(request: web.Request) -> dict[str, str]:
    """The form's fields as text (multipart with an uploaded key file, or urlencoded)."""
    fields: dict[str, str] = {}
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in (
                    "csrf", "name", "key", "keyfile"):
                continue
            data = b""
            while chunk := await part.read_chunk(8192):
                data += chunk
                if len(data) > MAX_KEY_TEXT:
                    raise UsageError(f"{part.name}: larger than {MAX_KEY_TEXT} bytes")
            try:
                fields[part.name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{part.name}: not UTF-8 text") from None
        return fields
    posted = await request.post()
    for key in ("csrf", "name", "key"):
        value = posted.get(key)
        if isinstance(value, str):
            fields[key] = value
    return fields


def _form(request: web.Request, view: InvitationView, token: str, name: str, key: str,
          error: str | None, status: int = 200) -> web.Response:
    data: dict[str, Any] = {"view": view, "inv": view.invitation, "name": name, "key": key,
                            "error": error, "csrf": csrf_token(request.app, f"onboard:{token}")}
    return aiohttp_jinja2.render_template("onboard.html", request, data, status=status)


async def _refuse(request: web.Request, reason: str, token: str) -> web.Response:
    status, message = PAGES.get(reason, (403, reason))
    client = request.remote or "unknown"
    row_id = token.partition(".")[0]
    await request.app[REFUSALS].refused(
        "invitation.refused", f"link:{client}", client,
        f"invitation:{row_id}" if row_id.isdigit() and len(row_id) <= 10 else None,
        reason=reason, method=request.method)
    return aiohttp_jinja2.render_template("error.html", request,
                                          {"status": status, "message": message},
                                          status=status)
