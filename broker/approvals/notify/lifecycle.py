"""Who is mailed about the vendor lifecycle, and the facts the mails need.

The events' subject is a name (a vendor's for ``vendor.*``, a technician's for
``technician.*``). It is only ever compared, as a bound SQL parameter, with the ``name`` column
of the one table the kind says; nothing else is done with it. A name that matches no row (the
row went away before planning) still reaches the webhook, and mails nobody.

The audiences, and why:

* ``vendor.disabled`` / ``vendor.contract_ended`` refuse every technician of the vendor at once
  and cut their live sessions. The vendor's **contact** (when set) is told, with the list of
  its technicians, since it is the vendor that must act (renew, call the hospital); **each
  technician** with an e-mail address is told that their account no longer works and whom to
  ask, so that nobody finds out by being cut mid-job; **every approver** is told, because the
  hospital side must know that this vendor's requests will be refused and who may lift it.
* ``vendor.contract_ending`` (14 days and 1 day before the end): the same three audiences,
  so that the vendor renews in time, its technicians plan their work, and the hospital expects
  it.
* ``technician.expired`` / ``technician.inactive_disabled`` concern one account: the
  **technician** (when they have an address) and the vendor's **contact** (it manages its own
  staff, and asks for a re-enable). Approvers are *not* mailed: an account running out is
  routine, a hospital with many vendors would get a mail per technician, and nothing they
  approve changes (the webhook still carries it for whoever wants every event).

Technicians whose own account is already off (disabled, expired, inactive, awaiting or
refused approval) are not among a vendor-wide event's technicians: nothing changed for them.

One mail per address (compared case-insensitively): the first role wins, in the order contact,
technician, approver, so a contact who is also a technician gets the contact's mail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.store.models import Approver, AuditEvent, Technician, Vendor

VENDOR_WIDE = frozenset({"vendor.disabled", "vendor.contract_ended", "vendor.contract_ending"})
ONE_ACCOUNT = frozenset({"technician.expired", "technician.inactive_disabled"})
LIFECYCLE_MAIL = VENDOR_WIDE | ONE_ACCOUNT

CONTACT, TECHNICIAN, APPROVER = "contact", "technician", "approver"


@dataclass
class Concerned:
    """The rows a lifecycle event's subject names."""

    vendor: Vendor | None = None
    technicians: list[Technician] = field(default_factory=list)  # every one it affects
    account: Technician | None = None  # the one account of a ``technician.*`` event


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str
    role: str  # CONTACT, TECHNICIAN or APPROVER (the template words the mail for it)


async def concerned(db: AsyncSession, event: AuditEvent) -> Concerned:
    """The vendor and the technician(s) the event is about (none for another kind)."""
    subject = event.subject or ""
    if not subject or event.kind not in LIFECYCLE_MAIL:
        return Concerned()
    if event.kind in VENDOR_WIDE:
        vendor = (await db.exec(select(Vendor).where(Vendor.name == subject))).first()
        if vendor is None:
            return Concerned()
        techs = (await db.exec(select(Technician).where(
            Technician.vendor_id == vendor.id, col(Technician.disabled).is_(False))
            .order_by(col(Technician.name)))).all()
        return Concerned(vendor, list(techs))
    tech = (await db.exec(select(Technician).where(Technician.name == subject))).first()
    if tech is None:
        return Concerned()
    vendor = await db.get(Vendor, tech.vendor_id) if tech.vendor_id is not None else None
    return Concerned(vendor, [tech], tech)


def facts_of(found: Concerned) -> dict[str, Any]:
    """What the webhook and the templates see of the rows (JSON-ready)."""
    facts: dict[str, Any] = {}
    if found.vendor is not None:
        end = found.vendor.contract_end
        facts["vendor"] = {"name": found.vendor.name, "contact": found.vendor.contact,
                           "contract_end": end.isoformat() if end is not None else None,
                           "disabled": found.vendor.disabled,
                           "technicians": [t.name for t in found.technicians]}
    tech = found.account
    if tech is not None:
        facts["technician"] = {
            "name": tech.name, "vendor": tech.vendor,
            "expires_at": tech.expires_at.isoformat() if tech.expires_at else None,
            "last_login_at": tech.last_login_at.isoformat() if tech.last_login_at else None}
    return facts


def recipients(kind: str, found: Concerned, approvers: list[Approver]) -> list[Recipient]:
    """Whom the event's e-mail goes to, one per address (see the module docstring)."""
    if kind not in LIFECYCLE_MAIL or (found.vendor is None and found.account is None):
        return []
    wanted: list[Recipient] = []
    if found.vendor is not None and found.vendor.contact:
        wanted.append(Recipient(found.vendor.contact, found.vendor.name, CONTACT))
    wanted.extend(Recipient(t.email, t.name, TECHNICIAN) for t in found.technicians if t.email)
    if kind in VENDOR_WIDE:
        wanted.extend(Recipient(a.email, a.name, APPROVER) for a in approvers)
    seen: set[str] = set()
    unique: list[Recipient] = []
    for one in wanted:
        if one.address.casefold() not in seen:
            seen.add(one.address.casefold())
            unique.append(one)
    return unique
