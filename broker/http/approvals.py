"""The approval pages: ``GET /approve/{token}`` shows a request and changes nothing;
``POST /approve/{token}`` (CSRF token bound to the link's id, optional comment) decides it.

Every refusal is a page with its own status and an ``approval.refused`` audit event, written
through the app's RefusalLog: a flood of bad links from one address is a bounded number of
rows and a ``refusal.suppressed`` count. A refusal the decision service makes itself is its
own event (``decision.refused``; ``approval.refused`` with reason ``self-approval`` when the
approver is the requester). Both routes are rate-limited per client address.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp_jinja2
import jwt
from aiohttp import web

from broker.approvals import links
from broker.approvals.tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    USED,
    WRONG_ALGORITHM,
    ApprovalClaims,
    TokenRefused,
    verify,
)
from broker.domain.durations import format_duration
from broker.errors import DuplicateRow, NotFound
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT, REFUSALS, SECRET
from broker.http.ratelimit import RateLimit
from broker.http.security import csrf_ok, csrf_token
from broker.services.requests import Requests

VIEW_LIMIT = web.AppKey("approval_view_limit", RateLimit)
DECIDE_LIMIT = web.AppKey("approval_decide_limit", RateLimit)
CSRF = "csrf token"

AGAIN = "Use the link exactly as it was sent to you, or ask for a fresh one."
PAGES: dict[str, tuple[int, str]] = {
    EXPIRED: (410, "This approval link has expired. Ask the broker's administrators for a"
                   " fresh link if the request still needs your decision."),
    BAD_SIGNATURE: (403, "This approval link is not valid: its signature does not match. "
                         + AGAIN),
    MALFORMED: (400, "This approval link is damaged or incomplete. " + AGAIN),
    WRONG_ALGORITHM: (403, "This approval link is not valid: it is not signed the way the"
                           " broker signs links. " + AGAIN),
    USED: (409, "This approval link has already been used: each link decides once."),
    CSRF: (403, "The form did not carry a valid security token. Open the link again and"
                " decide from that page."),
}


def setup(app: web.Application) -> None:
    app[VIEW_LIMIT] = RateLimit(per_minute=30, burst=20)
    app[DECIDE_LIMIT] = RateLimit(per_minute=10, burst=6)
    app.router.add_get("/approve/{token}", show)
    app.router.add_post("/approve/{token}", decide)


async def show(request: web.Request) -> web.StreamResponse:
    request.app[VIEW_LIMIT].enforce(request)
    claims = await _claims(request)
    if isinstance(claims, web.Response):
        return claims
    ctx = request.app[CONTEXT]
    if await links.is_spent(ctx, claims.jti):
        return await _used(request, claims)
    try:
        page = await links.load_page(ctx, claims)
    except NotFound as exc:
        return await _refuse(request, "not found", claims, status=404, message=str(exc))
    return aiohttp_jinja2.render_template("approve.html", request, {
        "page": page, "r": page.request, "claims": claims,
        "csrf": csrf_token(request.app, claims.jti),
        "duration": format_duration(timedelta(seconds=page.request.duration_s)),
    })


async def decide(request: web.Request) -> web.StreamResponse:
    request.app[DECIDE_LIMIT].enforce(request)
    claims = await _claims(request)
    if isinstance(claims, web.Response):
        return claims
    form = await request.post()
    if not csrf_ok(request.app, claims.jti, form.get("csrf")):
        return await _refuse(request, CSRF, claims)
    choice = form.get("decision")
    if choice not in ("approve", "deny"):
        raise BadInput("decision", "decision: must be approve or deny")
    comment = form.get("comment")
    text = comment if isinstance(comment, str) else ""  # the service applies the text rule
    ctx = request.app[CONTEXT]
    try:
        result = await Requests(ctx, f"approver:{claims.approver}").decide(
            claims.request_id, claims.approver, choice == "approve", text.strip() or None,
            via="link",
            within=links.spender(ctx, claims))
    except TokenRefused as exc:
        if exc.reason == USED:
            return await _used(request, claims)
        return await _refuse(request, exc.reason, claims)
    except DuplicateRow:  # the same link spent by a concurrent POST (PostgreSQL)
        return await _used(request, claims)
    except NotFound as exc:
        return await _refuse(request, "not found", claims, status=404, message=str(exc))
    return aiohttp_jinja2.render_template("approve_done.html", request, {
        "decision": result, "approved": choice == "approve", "claims": claims,
        "comment": text.strip() or None})


async def _claims(request: web.Request) -> ApprovalClaims | web.Response:
    """The link's verified claims, or the refusal page to answer with."""
    token = request.match_info["token"]
    try:
        return verify(request.app[SECRET], token, request.app[CONTEXT].now())
    except TokenRefused as exc:
        return await _refuse(request, exc.reason, None, token=token)


async def _used(request: web.Request, claims: ApprovalClaims) -> web.Response:
    """A spent link: audited like any refusal, then it shows what was decided, by whom, and
    where the grant stands, instead of a bare error."""
    refusal = await _refuse(request, USED, claims)
    try:
        page = await links.load_page(request.app[CONTEXT], claims)
    except NotFound:
        return refusal
    return aiohttp_jinja2.render_template("approve_used.html", request,
                                          {"page": page, "r": page.request},
                                          status=refusal.status)


async def _refuse(request: web.Request, reason: str, claims: ApprovalClaims | None, *,
                  status: int | None = None, message: str | None = None,
                  token: str | None = None) -> web.Response:
    default_status, default_message = PAGES.get(reason, (403, reason))
    data: dict[str, Any] = {"reason": reason, "method": request.method,
                            "client": request.remote or "unknown"}
    if claims is not None:
        data.update(approver=claims.approver, jti=claims.jti)
        subject: str | None = f"request:{claims.request_id}"
    else:
        data.update(_claimed(token))
        subject = None
    if message:
        data["detail"] = message
    await request.app[REFUSALS].refused("approval.refused",
                                        f"link:{request.remote or 'unknown'}",
                                        request.remote or "unknown", subject, **data)
    return aiohttp_jinja2.render_template(
        "error.html", request, {"status": status or default_status,
                                "message": message or default_message},
        status=status or default_status)


def _claimed(token: str | None) -> dict[str, Any]:
    """What a refused token claims to be, for the audit trail (unverified, trimmed)."""
    if not token:
        return {}
    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return {f"claimed_{key}": str(payload[key])[:100] for key in ("sub", "req", "jti")
            if key in payload}
