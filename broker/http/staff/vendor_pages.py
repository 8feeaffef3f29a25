"""The staff vendor pages: every vendor with its contract state (active, ending soon, ended,
disabled) and technicians (state, last use, expiry), the technicians waiting for approval,
and for admins the invitation form, Approve / Reject, and Withdraw for a link not used yet
(:mod:`broker.services.invitations`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from broker.domain.invitations import PENDING
from broker.errors import NotFound
from broker.http.keys import CONTEXT
from broker.http.staff.auth import redirect, requires, signed_in
from broker.http.staff.render import render
from broker.services.invitations import DEFAULT_TTL, Invitations, shown_state
from broker.services.vendor_views import contract_state, tech_rows
from broker.services.vendors import Vendors

MAX_FIELD = 320
NOTICES = {"invited": "Invitation e-mailed to {0}.", "approved": "{0} is approved.",
           "rejected": "{0} is rejected: it stays disabled.",
           "withdrawn": "The invitation to {0} is withdrawn: its link no longer works."}


@requires("vendors")
async def vendors_page(request: web.Request) -> web.StreamResponse:
    ctx, who = request.app[CONTEXT], signed_in(request)
    now = ctx.now()
    views = await Vendors(ctx, who.actor).all()
    invitations = await Invitations(ctx, who.actor).find()
    pending = [i for i in invitations if i.invitation.state == PENDING]
    rows = [{"view": v, "contract": contract_state(v, now),
             "techs": tech_rows(v, [i for i in invitations if i.vendor == v.vendor.name], now),
             "pending": sum(1 for p in pending if p.vendor == v.vendor.name)} for v in views]
    return render(request, "vendors.html", {"rows": rows, "pending": pending})


@requires("vendors")
async def vendor_page(request: web.Request) -> web.StreamResponse:
    ctx, who = request.app[CONTEXT], signed_in(request)
    now = ctx.now()
    view = await Vendors(ctx, who.actor).show(request.match_info["name"])
    invitations = await Invitations(ctx, who.actor).find(view.vendor.name)
    done, subject = request.query.get("done", ""), request.query.get("who", "")[:MAX_FIELD]
    known = {t.name for t in view.technicians} | {i.invitation.email for i in invitations}
    notice = NOTICES[done].format(subject) if done in NOTICES and subject in known else None
    return render(request, "vendor.html", {
        "v": view.vendor, "contract": contract_state(view, now), "notice": notice,
        "techs": tech_rows(view, invitations, now), "default_ttl": DEFAULT_TTL,
        "invitations": [(i, shown_state(i.invitation, now)) for i in reversed(invitations)],
        "pending": [i for i in invitations if i.invitation.state == PENDING]})


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value.strip()[:MAX_FIELD] if isinstance(value, str) else ""


@requires("onboard")
async def invite(request: web.Request) -> web.StreamResponse:
    ctx, who = request.app[CONTEXT], signed_in(request)
    form = await request.post()
    vendor = request.match_info["name"]
    email = _field(form, "email")
    issued = await Invitations(ctx, who.actor).invite(
        vendor, email, _field(form, "name") or None, _field(form, "expires") or DEFAULT_TTL)
    return redirect(f"/staff/vendors/{quote(issued.vendor, safe='')}?done=invited"
                    f"&who={quote(issued.invitation.email, safe='')}")


async def _decide(request: web.Request, approve: bool) -> web.StreamResponse:
    ctx, who = request.app[CONTEXT], signed_in(request)
    name = request.match_info["name"]
    view = await Invitations(ctx, who.actor).decide(name, approve)
    done = "approved" if approve else "rejected"
    return redirect(f"/staff/vendors/{quote(view.vendor, safe='')}?done={done}&who={name}")


@requires("onboard")
async def approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, True)


@requires("onboard")
async def reject(request: web.Request) -> web.StreamResponse:
    return await _decide(request, False)


@requires("onboard")
async def withdraw(request: web.Request) -> web.StreamResponse:
    ctx, who = request.app[CONTEXT], signed_in(request)
    ident = request.match_info["id"]
    if not ident.isdigit() or not 1 <= int(ident) < 2**31:
        raise NotFound(f"no invitation with id {ident[:20]!r}")
    view = await Invitations(ctx, who.actor).withdraw(int(ident))
    return redirect(f"/staff/vendors/{quote(view.vendor, safe='')}?done=withdrawn"
                    f"&who={quote(view.invitation.email, safe='')}")


def setup(app: web.Application) -> None:
    app.router.add_get("/staff/vendors", vendors_page)
    app.router.add_get("/staff/vendors/{name}", vendor_page)
    app.router.add_post("/staff/vendors/{name}/invite", invite)
    app.router.add_post("/staff/technicians/{name}/approve", approve)
    app.router.add_post("/staff/technicians/{name}/reject", reject)
    app.router.add_post("/staff/invitations/{id}/withdraw", withdraw)
