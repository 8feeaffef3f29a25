"""Vendors, invitations and the approval of invited technicians over the API. The
invitation's link is e-mailed to the invitee only: no response ever carries it."""

from __future__ import annotations

from typing import Any

from broker.http.api.framework import Call
from broker.http.api.schemas import (
    InvitationCreate,
    InvitationList,
    InvitationPath,
    InvitationQuery,
    NamePath,
    VendorList,
    VendorPath,
)
from broker.services.invitations import Invitations, InvitationView
from broker.services.vendor_views import invitation_record, vendor_record
from broker.services.vendors import Vendors


async def list_vendors(call: Call[Any, Any, Any]) -> VendorList:
    views = await Vendors(call.ctx, call.caller.actor).all()
    invitations = await Invitations(call.ctx, call.caller.actor).find()
    return VendorList.model_validate({"items": [vendor_record(v, invitations, call.ctx.now())
                                                for v in views]})


async def show_vendor(call: Call[VendorPath, Any, Any]) -> dict[str, Any]:
    view = await Vendors(call.ctx, call.caller.actor).show(call.path.name)
    invitations = await Invitations(call.ctx, call.caller.actor).find(view.vendor.name)
    return vendor_record(view, invitations, call.ctx.now())


async def create_invitation(call: Call[VendorPath, Any, InvitationCreate]) -> dict[str, Any]:
    body = call.body
    assert body is not None  # body_required
    issued = await Invitations(call.ctx, call.caller.actor).invite(
        call.path.name, body.email, body.name, body.expires)
    return invitation_record(InvitationView(issued.invitation, issued.vendor, None),
                           call.ctx.now())


async def withdraw_invitation(call: Call[InvitationPath, Any, Any]) -> dict[str, Any]:
    view = await Invitations(call.ctx, call.caller.actor).withdraw(call.path.id)
    return invitation_record(view, call.ctx.now())


async def list_invitations(call: Call[Any, InvitationQuery, Any]) -> InvitationList:
    views = await Invitations(call.ctx, call.caller.actor).find(call.query.vendor,
                                                                  call.query.state)
    now = call.ctx.now()
    return InvitationList.model_validate({"items": [invitation_record(v, now) for v in views]})


async def approve_technician(call: Call[NamePath, Any, Any]) -> dict[str, Any]:
    view = await Invitations(call.ctx, call.caller.actor).decide(call.path.name, True)
    return invitation_record(view, call.ctx.now())


async def reject_technician(call: Call[NamePath, Any, Any]) -> dict[str, Any]:
    view = await Invitations(call.ctx, call.caller.actor).decide(call.path.name, False)
    return invitation_record(view, call.ctx.now())
