"""Which audit events notify whom, and with what.

Every kind in :data:`WEBHOOK_KINDS` goes to the webhook; the e-mail audiences are:
``request.created`` each approver who may decide it, with their personal link;
``grant.breakglass``, ``command.alert`` and ``session.supervision_wanted`` every approver;
decisions and grant changes the requesting technician (when they have an e-mail address);
the vendor lifecycle (a vendor disabled, its contract ending or ended, a technician expired or
disabled for inactivity) the vendor's contact, the technician(s) and, for vendor-wide events,
every approver (:mod:`broker.approvals.notify.lifecycle` says why).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.approvals.notify.lifecycle import LIFECYCLE_MAIL, Concerned, concerned, facts_of
from broker.approvals.notify.lifecycle import recipients as lifecycle_recipients
from broker.config import NotifySection
from broker.domain.policy import Policy
from broker.errors import BrokerError
from broker.services.groups import GroupSource, GroupsUnavailable
from broker.services.requests import eligibility_refusal
from broker.store.models import AccessRequest, Approver, AuditEvent, Device, Grant, Technician

WEBHOOK = "webhook"
EMAIL = "email"

TECHNICIAN_MAIL = frozenset({
    "request.approval", "request.approved", "request.denied", "request.expired",
    "request.cancelled", "grant.activated", "grant.ending_soon", "grant.expired",
    "grant.revoked"})
APPROVER_LINK_MAIL = frozenset({"request.created"})
# a command alert rule matched; a session (or command) waits for a supervisor to join; a
# device's firmware changed under a session
EVERY_APPROVER_MAIL = frozenset({"grant.breakglass", "command.alert",
                                 "session.supervision_wanted", "device.firmware_changed"})
# events whose subject is a device's name (the device rides along in the facts)
DEVICE_SUBJECT = frozenset({"device.firmware_changed", "device.firmware_accepted",
                            "device.probe_failed"})
MAILED = TECHNICIAN_MAIL | APPROVER_LINK_MAIL | EVERY_APPROVER_MAIL | LIFECYCLE_MAIL
WEBHOOK_KINDS = MAILED | frozenset({
    "grant.created", "device.rotation_failed", "session.kill_requested",
    "device.firmware_accepted", "device.probe_failed",
    # self-service onboarding: someone waits for an admin's approval, and the outcome
    "technician.pending", "technician.approved", "technician.rejected"})


@dataclass(frozen=True)
class Delivery:
    channel: str
    recipient: str
    payload: dict[str, Any]


async def plan(db: AsyncSession, event: AuditEvent, settings: NotifySection,
               policies: list[Policy], public_url: str, groups: GroupSource | None = None
               ) -> list[Delivery]:
    """The deliveries one audit event calls for under the current settings. ``groups`` says
    who is in which approver group (the database's by default); when it cannot tell (the
    directory is down) GroupsUnavailable goes up, and the round is planned again later."""
    if event.kind not in WEBHOOK_KINDS:
        return []
    facts = await describe(db, event, public_url)
    tech, device = facts.pop("_technician"), facts.pop("_device")
    found: Concerned = facts.pop("_concerned")
    deliveries: list[Delivery] = []
    if settings.webhook_url:
        deliveries.append(Delivery(WEBHOOK, settings.webhook_url, facts))
    if not settings.smtp_host:
        return deliveries
    if event.kind in APPROVER_LINK_MAIL and tech is not None and device is not None:
        for approver in await _approvers(db):
            try:
                refusal = await eligibility_refusal(db, tech, approver, policies, device,
                                                    groups)
            except GroupsUnavailable:
                raise
            except BrokerError:
                refusal = "no policy applies"
            if refusal is None:
                deliveries.append(_mail(event, approver.email, approver.name, facts,
                                        link_for=approver.name))
    elif event.kind in EVERY_APPROVER_MAIL:
        deliveries.extend(_mail(event, a.email, a.name, facts) for a in await _approvers(db))
    elif event.kind in LIFECYCLE_MAIL:
        for one in lifecycle_recipients(event.kind, found, await _approvers(db)):
            deliveries.append(_mail(event, one.address, one.name,
                                    {**facts, "audience": one.role}))
    elif event.kind in TECHNICIAN_MAIL and tech is not None and tech.email:
        completed = event.kind == "request.approval" and facts["request"]["state"] != "pending"
        if not completed:  # the last approval: the request.approved mail says it all
            deliveries.append(_mail(event, tech.email, tech.name, facts))
    return deliveries


def _mail(event: AuditEvent, address: str, name: str, facts: dict[str, Any],
          link_for: str | None = None) -> Delivery:
    return Delivery(EMAIL, address, {"template": event.kind, "to_name": name,
                                     "link_for": link_for, "facts": facts})


async def _approvers(db: AsyncSession) -> list[Approver]:
    return list((await db.exec(select(Approver).where(col(Approver.disabled).is_(False))
                               .order_by(col(Approver.id)))).all())


async def describe(db: AsyncSession, event: AuditEvent, public_url: str) -> dict[str, Any]:
    """The event plus the request, grant, technician, device and vendor it concerns
    (JSON-ready; the rows themselves ride along under ``_technician``/``_device``/
    ``_concerned`` for the planner). A subject that is a name (a device's, a vendor's, a
    technician's) is only looked up, by exact match, in the table its event kind says."""
    facts: dict[str, Any] = {
        "event": {"seq": event.seq, "kind": event.kind, "ts": event.ts.isoformat(),
                  "actor": event.actor, "subject": event.subject,
                  "data": json.loads(event.data)},
        "broker": public_url,
    }
    kind, _, ident = (event.subject or "").partition(":")
    request: AccessRequest | None = None
    grant: Grant | None = None
    if kind == "request" and ident.isdigit():
        request = await db.get(AccessRequest, int(ident))
        if request is not None:
            grant = (await db.exec(select(Grant).where(Grant.request_id == request.id))).first()
    elif kind == "grant" and ident.isdigit():
        grant = await db.get(Grant, int(ident))
        if grant is not None and grant.request_id is not None:
            request = await db.get(AccessRequest, grant.request_id)
    owner = request or grant
    tech = await db.get(Technician, owner.technician_id) if owner else None
    device = await db.get(Device, owner.device_id) if owner else None
    if event.kind in DEVICE_SUBJECT and event.subject:
        device = (await db.exec(select(Device).where(Device.name == event.subject))).first()
    if request is not None:
        facts["request"] = {"id": request.id, "state": request.state, "reason": request.reason,
                            "duration_s": request.duration_s, "protocols": request.protocols,
                            "policy": request.policy,
                            "expires_at": request.expires_at.isoformat()}
    if grant is not None:
        facts["grant"] = {"id": grant.id, "state": grant.state, "protocols": grant.protocols,
                          "start": grant.start.isoformat(), "end": grant.end.isoformat(),
                          "breakglass": grant.breakglass}
    if tech is not None:
        facts["technician"] = {"name": tech.name, "vendor": tech.vendor}
    if device is not None:
        facts["device"] = {"name": device.name, "model": device.model,
                           "firmware": device.firmware, "department": device.department,
                           "purpose": device.purpose, "state": device.state}
    found = await concerned(db, event)
    facts.update(facts_of(found))
    facts["_technician"], facts["_device"], facts["_concerned"] = tech, device, found
    return facts
