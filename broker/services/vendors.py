"""Vendors (technicians' employers) and the technician lifecycle: expiry, inactivity, the
last successful login. A vendor's disable or contract end refuses all its technicians at once
(:func:`broker.services.grants.check_access`); its audit event (``vendor.``) makes every
node's live sessions re-check within a second, like a revoke. A contract end is warned of
(``vendor.contract_ending``) 14 days and 1 day ahead; the notifier mails all of these."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.chain import lock_chain
from broker.domain.errors import InvariantViolation
from broker.domain.invitations import PENDING
from broker.domain.text import VENDOR
from broker.domain.vendors import (
    VendorState,
    check_domain,
    contract_warning_due,
    inactive_deadline,
    next_contract_warning,
    refusal_for,
    shown_end,
    tech_state,
)
from broker.errors import Conflict, Refused, UsageError
from broker.services.context import Context
from broker.services.lookup import by_name, maybe_by_name
from broker.services.text import address, free_text
from broker.store.engine import run_sync
from broker.store.models import AuditEvent, Invitation, Technician, Vendor


def state_of(vendor: Vendor | None) -> VendorState | None:
    if vendor is None:
        return None
    return VendorState(vendor.name, vendor.disabled, vendor.contract_end)


def technician_state(now: datetime, tech: Technician, vendor: Vendor | None) -> str:
    return tech_state(now, state_of(vendor), tech.disabled, tech.expires_at)


def domains_of(texts: Sequence[str]) -> list[str]:
    try:
        return sorted({check_domain(t) for t in texts})
    except InvariantViolation as exc:
        raise UsageError(str(exc)) from None


@dataclass
class VendorView:
    vendor: Vendor
    technicians: list[Technician]


class Vendors:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def add(self, name: str, domains: Sequence[str], contract_end: datetime | None,
                  contact: str | None) -> Vendor:
        name = await free_text(self.ctx, self.actor, name, VENDOR, name)
        clean = domains_of(domains)
        if contact is not None:
            contact = await address(self.ctx, self.actor, name, "--contact", contact)
        async with self.ctx.store.session() as db:
            if await maybe_by_name(db, Vendor, name):
                raise Conflict(f"vendor {name!r} already exists")
            vendor = Vendor(name=name, domains=clean, contact=contact, contract_end=contract_end,
                            created_at=self.ctx.now())
            db.add(vendor)
            try:
                await db.flush()
            except IntegrityError:
                raise Conflict(f"vendor {name!r} already exists") from None
            await self.ctx.audit(db, "vendor.added", self.actor, name, domains=clean,
                                 contact=contact, contract_end=_iso(contract_end))
        return vendor

    async def all(self) -> list[VendorView]:
        async with self.ctx.store.session() as db:
            vendors = (await db.exec(select(Vendor).order_by(col(Vendor.name)))).all()
            techs = (await db.exec(select(Technician).order_by(col(Technician.name)))).all()
        return [VendorView(v, [t for t in techs if t.vendor_id == v.id]) for v in vendors]

    async def show(self, name: str) -> VendorView:
        async with self.ctx.store.session() as db:
            vendor = await by_name(db, Vendor, name)
            techs = (await db.exec(select(Technician).where(Technician.vendor_id == vendor.id)
                                   .order_by(col(Technician.name)))).all()
        return VendorView(vendor, list(techs))

    async def set_disabled(self, name: str, disabled: bool) -> Vendor:
        async with self.ctx.store.session() as db:
            vendor = await by_name(db, Vendor, name)
            if vendor.disabled == disabled:
                state = "disabled" if disabled else "enabled"
                raise Conflict(f"vendor {name!r} is already {state}")
            vendor.disabled = disabled
            db.add(vendor)
            count = len((await db.exec(select(Technician.id).where(
                Technician.vendor_id == vendor.id))).all())
            await self.ctx.audit(db, "vendor.disabled" if disabled else "vendor.enabled",
                                 self.actor, name, technicians=count)
        return vendor

    async def set_contract(self, name: str, contract_end: datetime | None) -> Vendor:
        async with self.ctx.store.session() as db:
            vendor = await by_name(db, Vendor, name)
            vendor.contract_end = contract_end
            vendor.contract_end_noted = False
            db.add(vendor)
            await self.ctx.audit(db, "vendor.contract_changed", self.actor, name,
                                 contract_end=_iso(contract_end))
        return vendor


async def vendor_for_technician(ctx: Context, db: AsyncSession, actor: str, name: str,
                                tech: str) -> tuple[Vendor, bool]:
    """The vendor ``tech add --vendor NAME`` names, and whether it was registered just now
    (an unknown name registers a vendor with no domains and no contract end, audited, so
    that scripts written before vendors existed keep working)."""
    vendor = await maybe_by_name(db, Vendor, name)
    if vendor is not None:
        return vendor, False
    vendor = Vendor(name=name, domains=[], created_at=ctx.now())
    db.add(vendor)
    await db.flush()
    await ctx.audit(db, "vendor.added", actor, name, domains=[], contact=None,
                    contract_end=None, implicit=f"by 'tech add {tech}'")
    return vendor, True


async def awaiting_approval(db: AsyncSession, tech: Technician) -> bool:
    """Whether ``tech`` enrolled by invitation and no admin has decided yet."""
    return await run_sync(db, is_awaiting_approval, tech)


_PENDING_INVITATION = select(Invitation.id).where(
    Invitation.technician_id == bindparam("tech"), Invitation.state == PENDING).limit(1)


def is_awaiting_approval(db: Session, tech: Technician) -> bool:
    """:func:`awaiting_approval` inside a unit written as a plain function."""
    return db.exec(_PENDING_INVITATION, params={"tech": tech.id}).first() is not None


async def account_refusal(ctx: Context, tech_name: str) -> str | None:
    """Why ``tech_name`` may not use the broker at all now (vendor, expiry, disabled)."""
    async with ctx.store.session() as db:
        tech = (await db.exec(select(Technician).where(Technician.name == tech_name))).first()
        if tech is None:
            return "unknown technician"
        vendor = await db.get(Vendor, tech.vendor_id) if tech.vendor_id is not None else None
        pending = await awaiting_approval(db, tech)
    refused = refusal_for(ctx.now(), state_of(vendor), tech.disabled, tech.expires_at,
                          tech_pending=pending)
    return refused[1] if refused else None


async def note_login(ctx: Context, db: AsyncSession, tech_name: str) -> None:
    """A successful SSH login or web sign-in restarts the inactivity clock (in the unit of
    work that audits the login)."""
    await run_sync(db, _note_login, ctx.now(), tech_name)


_NOTE_LOGIN = (update(Technician).where(col(Technician.name) == bindparam("tech"))
               .values(last_login_at=bindparam("now")))  # built once: on every login


def _note_login(db: Session, now: datetime, tech_name: str) -> None:
    db.connection().execute(_NOTE_LOGIN, {"tech": tech_name, "now": now})


async def login_succeeded(ctx: Context, tech_name: str, subject: str | None,
                          **data: object) -> None:
    """``login.succeeded`` audited and the inactivity clock restarted, in one unit of work
    (a login is on every session's path: one write, not two)."""
    def write(db: Session) -> None:
        ctx.append_audit(db, "login.succeeded", f"technician:{tech_name}", subject, **data)
        _note_login(db, ctx.now(), tech_name)

    await ctx.store.run_write(write)


async def lifecycle_round(ctx: Context) -> int:
    """Warn of contract ends ahead, audit contract ends, disable expired and inactive
    technicians; how many changes (a warning is not one: it refuses nobody)."""
    now = ctx.now()
    days = ctx.config.settings.vendors.inactive_days
    changes = 0
    async with ctx.store.session() as db:
        await lock_chain(db)  # every node and worker runs this: one at a time
        for vendor in (await db.exec(select(Vendor).where(
                col(Vendor.contract_end).is_not(None),
                col(Vendor.contract_end_noted).is_(False)))).all():
            if vendor.contract_end is not None and vendor.contract_end <= now:
                vendor.contract_end_noted = True
                db.add(vendor)
                await ctx.audit(db, "vendor.contract_ended", "broker", vendor.name,
                                contract_end=_iso(vendor.contract_end))
                changes += 1
            elif vendor.contract_end is not None and not vendor.disabled:
                await _warn_contract_end(ctx, db, vendor, vendor.contract_end)
        for tech in (await db.exec(select(Technician).where(
                col(Technician.disabled).is_(False)))).all():
            if tech.expires_at is not None and tech.expires_at <= now:
                tech.disabled = True
                db.add(tech)
                await ctx.audit(db, "technician.expired", "broker", tech.name,
                                expires_at=_iso(tech.expires_at))
                changes += 1
                continue
            deadline = inactive_deadline(tech.created_at, tech.last_login_at, tech.enabled_at,
                                         days)
            if deadline <= now:
                tech.disabled = True
                db.add(tech)
                await ctx.audit(db, "technician.inactive_disabled", "broker", tech.name,
                                last_login_at=_iso(tech.last_login_at), inactive_days=days)
                changes += 1
    return changes


async def _warn_contract_end(ctx: Context, db: AsyncSession, vendor: Vendor,
                             end: datetime) -> None:
    """``vendor.contract_ending`` 14 days and 1 day before ``end``, once each per end date
    (the audit trail is the record of what was given; a new end date warns afresh)."""
    if contract_warning_due(ctx.now(), end, set()) is None:
        return  # nothing due whatever was given: no need to read the trail
    given: set[int] = set()
    for data in (await db.exec(select(AuditEvent.data).where(
            AuditEvent.kind == "vendor.contract_ending",
            AuditEvent.subject == vendor.name))).all():
        facts = json.loads(data)
        if facts.get("contract_end") == _iso(end) and isinstance(facts.get("days"), int):
            given.add(facts["days"])
    days = contract_warning_due(ctx.now(), end, given)
    if days is not None:  # days: which warning; days_left: whole days to go, rounded up
        await ctx.audit(db, "vendor.contract_ending", "broker", vendor.name,
                        contract_end=_iso(end), days=days,
                        days_left=math.ceil((end - ctx.now()) / timedelta(days=1)))


async def next_lifecycle_deadline(ctx: Context) -> datetime | None:
    days = ctx.config.settings.vendors.inactive_days
    now = ctx.now()
    async with ctx.store.session() as db:
        ends = (await db.exec(select(Vendor.contract_end, Vendor.disabled).where(
            col(Vendor.contract_end).is_not(None),
            col(Vendor.contract_end_noted).is_(False)))).all()
        techs = (await db.exec(select(Technician).where(
            col(Technician.disabled).is_(False)))).all()
    moments = [m for m, _ in ends if m is not None]
    for end, disabled in ends:
        warning = next_contract_warning(now, end) if end is not None and not disabled else None
        if warning is not None:
            moments.append(warning)
    for tech in techs:
        moments.append(inactive_deadline(tech.created_at, tech.last_login_at, tech.enabled_at,
                                         days))
        if tech.expires_at is not None:
            moments.append(tech.expires_at)
    return min(moments, default=None)


async def set_expiry(ctx: Context, actor: str, name: str, expires_at: datetime | None
                     ) -> Technician:
    async with ctx.store.session() as db:
        tech = await by_name(db, Technician, name)
        tech.expires_at = expires_at
        db.add(tech)
        await ctx.audit(db, "technician.expiry_set", actor, name, expires_at=_iso(expires_at))
    return tech


async def enable_technician(ctx: Context, actor: str, name: str) -> Technician:
    async with ctx.store.session() as db:
        tech = await by_name(db, Technician, name)
        if tech.expires_at is not None and tech.expires_at <= ctx.now():
            raise Refused(f"technician {name!r} expired on {shown_end(tech.expires_at)}: set a"
                          f" later date first with 'broker tech expire {name} DATE'")
        if not tech.disabled:
            raise Conflict(f"technician {name!r} is already enabled")
        invited = (await db.exec(select(Invitation).where(
            Invitation.technician_id == tech.id))).first()
        if invited is not None and invited.state in ("pending", "rejected"):
            raise Refused(f"technician {name!r} is awaiting approval: use 'broker tech"
                          f" approve {name}'" if invited.state == "pending" else
                          f"technician {name!r} came by invitation and was rejected")
        tech.disabled, tech.enabled_at = False, ctx.now()
        db.add(tech)
        await ctx.audit(db, "technician.enabled", actor, name)
    return tech


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
