"""Vendors (technicians' employers) and the technician lifecycle: expiry, inactivity, the
last successful login. A vendor's disable or contract end refuses all its technicians at once
(:func:`broker.services.grants.check_access`); its audit event (``vendor.``) makes every
node's live sessions re-check within a second, like a revoke."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.domain.errors import InvariantViolation
from broker.domain.text import VENDOR
from broker.domain.vendors import (
    VendorState,
    check_domain,
    inactive_deadline,
    refusal_for,
    shown_end,
    tech_state,
)
from broker.errors import Conflict, Refused, UsageError
from broker.services.context import Context
from broker.services.lookup import by_name, maybe_by_name
from broker.services.text import address, free_text
from broker.store.models import Technician, Vendor


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


async def account_refusal(ctx: Context, tech_name: str) -> str | None:
    """Why ``tech_name`` may not use the broker at all now (vendor, expiry, disabled)."""
    async with ctx.store.session() as db:
        tech = (await db.exec(select(Technician).where(Technician.name == tech_name))).first()
        if tech is None:
            return "unknown technician"
        vendor = await db.get(Vendor, tech.vendor_id) if tech.vendor_id is not None else None
    refused = refusal_for(ctx.now(), state_of(vendor), tech.disabled, tech.expires_at)
    return refused[1] if refused else None


async def note_login(ctx: Context, tech_name: str) -> None:
    """A successful SSH login or web sign-in: restarts the inactivity clock."""
    async with ctx.store.session() as db:
        tech = (await db.exec(select(Technician).where(Technician.name == tech_name))).first()
        if tech is not None:
            tech.last_login_at = ctx.now()
            db.add(tech)


async def lifecycle_round(ctx: Context) -> int:
    """Audit contract ends, disable expired and inactive technicians; how many changes."""
    now = ctx.now()
    days = ctx.config.settings.vendors.inactive_days
    changes = 0
    async with ctx.store.session() as db:
        for vendor in (await db.exec(select(Vendor).where(
                col(Vendor.contract_end).is_not(None),
                col(Vendor.contract_end_noted).is_(False)))).all():
            if vendor.contract_end is not None and vendor.contract_end <= now:
                vendor.contract_end_noted = True
                db.add(vendor)
                await ctx.audit(db, "vendor.contract_ended", "broker", vendor.name,
                                contract_end=_iso(vendor.contract_end))
                changes += 1
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


async def next_lifecycle_deadline(ctx: Context) -> datetime | None:
    days = ctx.config.settings.vendors.inactive_days
    async with ctx.store.session() as db:
        ends = (await db.exec(select(Vendor.contract_end).where(
            col(Vendor.contract_end).is_not(None),
            col(Vendor.contract_end_noted).is_(False)))).all()
        techs = (await db.exec(select(Technician).where(
            col(Technician.disabled).is_(False)))).all()
    moments = [m for m in ends if m is not None]
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
        tech.disabled, tech.enabled_at = False, ctx.now()
        db.add(tech)
        await ctx.audit(db, "technician.enabled", actor, name)
    return tech


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
