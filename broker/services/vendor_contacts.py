"""A vendor contact's scoped sign-in: the vendor's ``contact`` address asks for a link
(single-use, short-lived, e-mailed, stored hashed: :mod:`broker.domain.invitations`), the link
opens a browser session (cookie ``<id>.<secret>``, only its hash stored), and that session
sees and disables only its own vendor's technicians. A session ends at its expiry, on
sign-out, and as soon as the vendor's contact address changes or the vendor is disabled.

Audit: ``vendor.login_link_sent``, ``vendor.login_refused``, ``vendor.login``,
``vendor.logout``, ``vendor.contact_refused`` (another vendor's technician), and the
disable itself is ``technician.disabled`` (which cuts live sessions like a revoke)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.domain import invitations as rules
from broker.domain.identity import normalise_address
from broker.domain.invitations import LinkRefused
from broker.errors import NotFound
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.invitations import Invitations, fresh_token, placeholder, web_secret
from broker.services.mail import send_now
from broker.services.vendor_views import TechRow, tech_rows
from broker.services.vendors import VendorView
from broker.store.models import Technician, Vendor, VendorLogin

LINK_TTL = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=8)
FORGET_AFTER = timedelta(days=1)
_COOKIE_SECRET = 32


@dataclass(frozen=True)
class ContactSession:
    login_id: int
    vendor_id: int
    vendor: str
    email: str
    csrf_binding: str

    @property
    def actor(self) -> str:
        return f"vendor-contact:{self.email}"[:200]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def request_link(ctx: Context, email: str, client: str) -> int:
    """E-mail a sign-in link to ``email`` for each enabled vendor it is the contact of; how
    many were sent (the page never says: it would tell who is a contact)."""
    wanted = normalise_address(email.strip()) if "@" in email else ""
    now = ctx.now()
    async with ctx.store.session() as db:
        await _forget_old(db, now)
        vendors = [v for v in (await db.exec(select(Vendor).where(
            col(Vendor.contact).is_not(None)))).all()
            if wanted and v.contact and normalise_address(v.contact) == wanted]
        usable = [v for v in vendors if not v.disabled]
        if not usable:
            await ctx.audit(db, "vendor.login_refused", f"web:{client}"[:200], None,
                            email=email[:320], reason="not an enabled vendor's contact"
                            if not vendors else "vendor disabled")
            return 0
        links: list[tuple[Vendor, str]] = []
        for vendor in usable:
            assert vendor.id is not None
            row = VendorLogin(vendor_id=vendor.id, email=vendor.contact or wanted,
                              token_hash=placeholder(),
                              link_expires_at=now + LINK_TTL, created_at=now)
            db.add(row)
            await db.flush()
            assert row.id is not None
            minted = fresh_token(web_secret(ctx), rules.VENDOR_LOGIN, row.id)
            row.token_hash = minted.token_hash
            db.add(row)
            await ctx.audit(db, "vendor.login_link_sent", f"web:{client}"[:200], vendor.name,
                            email=row.email, login=row.id,
                            expires_at=row.link_expires_at.isoformat())
            links.append((vendor, minted.token))
    public = ctx.config.settings.broker.public_url
    for vendor, token in links:
        failure = await send_now(
            ctx, vendor.contact or wanted, vendor.name, f"Sign in: {vendor.name}'s technicians",
            f"Open this link to see and manage {vendor.name}'s technicians at the hospital's"
            f" vendor access broker (it works once, for 15 minutes):\n\n"
            f"{public}/vendor/login/{token}\n\nIf you did not ask for it, ignore this"
            " message.\n")
        if failure is not None:
            async with ctx.store.session() as db:
                await ctx.audit(db, "notification.failed", "broker", vendor.name,
                                channel="email", about="vendor.login_link_sent",
                                error=failure)
    return len(links)


async def spend_link(ctx: Context, token: str, client: str) -> tuple[str, ContactSession]:
    """Spend a sign-in link: the new session's cookie value and the session."""
    parsed = rules.parse_token(web_secret(ctx), rules.VENDOR_LOGIN, token)
    now = ctx.now()
    async with ctx.store.session() as db:
        row = await db.get(VendorLogin, parsed.row_id)
        if row is None or not rules.hash_matches(row.token_hash, parsed.token_hash):
            raise LinkRefused(rules.TAMPERED)
        if row.used_at is not None:
            raise LinkRefused(rules.USED)
        if row.link_expires_at <= now:
            raise LinkRefused(rules.EXPIRED)
        vendor = await db.get(Vendor, row.vendor_id)
        if vendor is None or not _still_contact(vendor, row.email):
            raise LinkRefused(rules.WITHDRAWN)
        secret = secrets.token_urlsafe(_COOKIE_SECRET)
        binding = secrets.token_hex(16)
        spent = await db.exec(update(VendorLogin).where(
            col(VendorLogin.id) == row.id, col(VendorLogin.used_at).is_(None)).values(
            used_at=now, session_hash=_hash(secret), csrf_binding=binding,
            session_expires_at=now + SESSION_TTL))
        if spent.rowcount != 1:
            raise LinkRefused(rules.USED)
        await ctx.audit(db, "vendor.login", f"vendor-contact:{row.email}"[:200], vendor.name,
                        login=row.id, address=client)
    assert row.id is not None and vendor.id is not None
    return (f"{row.id}.{secret}",
            ContactSession(row.id, vendor.id, vendor.name, row.email, binding))


async def session_of(ctx: Context, cookie: str | None) -> ContactSession | None:
    """The signed-in vendor contact this cookie belongs to, or None."""
    if not cookie or len(cookie) > 120:
        return None
    ident, _, secret = cookie.partition(".")
    if not ident.isdigit() or len(ident) > 10 or not secret:
        return None
    async with ctx.store.session() as db:
        row = await db.get(VendorLogin, int(ident))
        if (row is None or row.session_hash is None or row.csrf_binding is None
                or row.session_expires_at is None
                or not hmac.compare_digest(row.session_hash, _hash(secret))
                or row.session_expires_at <= ctx.now()):
            return None
        vendor = await db.get(Vendor, row.vendor_id)
    if vendor is None or not _still_contact(vendor, row.email):
        return None
    assert row.id is not None and vendor.id is not None
    return ContactSession(row.id, vendor.id, vendor.name, row.email, row.csrf_binding)


async def sign_out(ctx: Context, who: ContactSession) -> None:
    async with ctx.store.session() as db:
        await db.exec(update(VendorLogin).where(
            col(VendorLogin.id) == who.login_id).values(session_expires_at=ctx.now()))
        await ctx.audit(db, "vendor.logout", who.actor, who.vendor, login=who.login_id)


async def technicians(ctx: Context, who: ContactSession) -> list[TechRow]:
    """The contact's own vendor's technicians, with their state (``pending``/``rejected``
    for invited ones no admin approved)."""
    async with ctx.store.session() as db:
        vendor = await db.get(Vendor, who.vendor_id)
        techs = (await db.exec(select(Technician).where(
            Technician.vendor_id == who.vendor_id).order_by(col(Technician.name)))).all()
    if vendor is None:
        return []
    invitations = await Invitations(ctx, who.actor).find(vendor.name)
    return tech_rows(VendorView(vendor, list(techs)), invitations, ctx.now())


async def disable(ctx: Context, who: ContactSession, tech_name: str) -> None:
    """Disable one of the contact's own technicians (live sessions are cut). Any other name,
    another vendor's technician included, is 'not found', audited."""
    async with ctx.store.session() as db:
        tech = (await db.exec(select(Technician).where(Technician.name == tech_name))).first()
        if tech is None or tech.vendor_id != who.vendor_id:
            await ctx.audit(db, "vendor.contact_refused", who.actor, who.vendor,
                            technician=tech_name[:63], action="disable",
                            reason="not this vendor's technician" if tech else "no such name")
    if tech is None or tech.vendor_id != who.vendor_id:
        raise NotFound(f"{who.vendor} has no technician named {tech_name[:63]!r}")
    await Directory(ctx, who.actor).disable_technician(tech.name)


async def _forget_old(db: AsyncSession, now: datetime) -> None:
    """Rows of links never used that expired, and of sessions that ended, a day ago: each
    ask for a link adds one, so they are cleared as new ones come."""
    cutoff = now - FORGET_AFTER
    await db.exec(delete(VendorLogin).where(or_(
        and_(col(VendorLogin.used_at).is_(None), col(VendorLogin.link_expires_at) < cutoff),
        col(VendorLogin.session_expires_at) < cutoff)))


def _still_contact(vendor: Vendor, email: str) -> bool:
    return (not vendor.disabled and vendor.contact is not None
            and normalise_address(vendor.contact) == normalise_address(email))
