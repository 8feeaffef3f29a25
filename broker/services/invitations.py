"""Technician self-service onboarding: a hospital admin invites an address of a vendor's
domains; the e-mailed link (single-use, expiring, bound to its invitation, stored hashed: see
:mod:`broker.domain.invitations`) lets the technician choose a user name and give an SSH
public key; the technician then exists **disabled, pending approval** until a hospital admin
approves (enabled) or rejects (stays disabled) it. Every step is an audit event:
``vendor.invited``, ``invitation.used``, ``technician.pending``, ``technician.approved`` /
``technician.rejected``, and ``invitation.withdrawn`` for a link taken back before its use;
refusals are ``invitation.refused``."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.credentials.keys import KeyPaths, load_secret_bytes
from broker.domain import invitations as rules
from broker.domain.durations import DurationError, parse_duration
from broker.domain.invitations import LinkRefused
from broker.domain.vendors import email_in_domains, shown_end
from broker.errors import Conflict, NotFound, Refused, UsageError
from broker.services.context import Context
from broker.services.directory import parse_public_keys, valid_name
from broker.services.lookup import by_name, maybe_by_name
from broker.services.mail import require_smtp, send_now
from broker.services.text import address
from broker.store.models import Invitation, Technician, TechnicianKey, Vendor

if TYPE_CHECKING:
    import asyncssh

DEFAULT_TTL = "7d"
MAX_TTL = timedelta(days=30)
MIN_TTL = timedelta(minutes=5)
MAX_KEY_TEXT = 16384


def web_secret(ctx: Context) -> bytes:
    return load_secret_bytes(KeyPaths.of(ctx.config).web_key, "the web secret key")


def invitation_ttl(text: str) -> timedelta:
    try:
        ttl = parse_duration(text)
    except DurationError as exc:
        raise UsageError(f"--expires: {exc}") from None
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise UsageError(f"--expires {text}: an invitation lives between 5m and 30d")
    return ttl


def fresh_token(secret: bytes, purpose: str, row_id: int) -> rules.Minted:
    return rules.mint(secret, purpose, row_id, secrets.token_urlsafe(32))


def placeholder() -> str:
    return rules.placeholder_hash(secrets.token_hex(28))


def link_url(ctx: Context, token: str) -> str:
    return f"{ctx.config.settings.broker.public_url}/onboard/{token}"


def check_key(text: str) -> asyncssh.SSHKey:
    """Exactly one OpenSSH public key of an accepted kind, or one line saying what is wrong."""
    if len(text) > MAX_KEY_TEXT:
        raise UsageError(f"public key: {len(text)} characters is too long for one key")
    keys = parse_public_keys(text, "public key")
    if len(keys) != 1:
        raise UsageError(f"public key: give exactly one key, not {len(keys)}")
    key = keys[0]
    algorithm = key.algorithm.decode("ascii", "replace")
    bits = getattr(key.pyca_key, "key_size", None) if algorithm == "ssh-rsa" else None
    refusal = rules.key_refusal(algorithm, bits)
    if refusal:
        raise UsageError(f"public key: {refusal}")
    return key


@dataclass(frozen=True)
class Issued:
    invitation: Invitation
    vendor: str
    url: str


@dataclass(frozen=True)
class InvitationView:
    invitation: Invitation
    vendor: str
    technician: str | None


class Invitations:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    # -- inviting ---------------------------------------------------------------------------
    async def invite(self, vendor_name: str, email: str, name: str | None = None,
                     expires: str = DEFAULT_TTL) -> Issued:
        """Create an invitation and e-mail its link to ``email`` (nothing is left behind
        that could be used if the mail cannot be sent)."""
        require_smtp(self.ctx, "invitations")
        ttl = invitation_ttl(expires)
        email = await address(self.ctx, self.actor, vendor_name[:200], "--email", email)
        if name is not None:
            valid_name("technician", name)
        now = self.ctx.now()
        secret = web_secret(self.ctx)
        async with self.ctx.store.session() as db:
            vendor = await by_name(db, Vendor, vendor_name)
            problem = _vendor_refusal(vendor, now)
            if problem is None and not email_in_domains(email, vendor.domains):
                problem = (f"--email {email}: not in vendor {vendor.name}'s domains"
                           f" ({', '.join(vendor.domains)})")
            if problem is None and name is not None and await maybe_by_name(db, Technician,
                                                                            name):
                problem = f"--name {name}: a technician of that name already exists"
            if problem is not None:
                await self.ctx.audit(db, "invitation.refused", self.actor, vendor.name,
                                     email=email, reason=problem)
        if problem is not None:
            raise Refused(problem)
        assert vendor.id is not None
        async with self.ctx.store.session() as db:
            row = Invitation(vendor_id=vendor.id, email=email, name=name,
                             token_hash=placeholder(), expires_at=now + ttl,
                             created_by=self.actor[:200], created_at=now)
            db.add(row)
            await db.flush()
            assert row.id is not None
            minted = fresh_token(secret, rules.INVITE, row.id)
            row.token_hash = minted.token_hash
            db.add(row)
            await self.ctx.audit(db, "vendor.invited", self.actor, vendor.name,
                                 invitation=row.id, email=email, name=name,
                                 expires_at=row.expires_at.isoformat())
        url = link_url(self.ctx, minted.token)
        failure = await send_now(self.ctx, email, name or email,
                                 f"Your access to {self.ctx.config.settings.broker.public_url}"
                                 f" for {vendor.name}", _invite_body(vendor.name, url,
                                                                     row.expires_at))
        if failure is not None:
            async with self.ctx.store.session() as db:
                stored = await db.get(Invitation, row.id)
                assert stored is not None
                stored.expires_at = self.ctx.now()
                db.add(stored)
                await self.ctx.audit(db, "invitation.mail_failed", self.actor, vendor.name,
                                     invitation=row.id, error=failure)
            raise Refused(f"the invitation could not be e-mailed to {email}: {failure}")
        return Issued(row, vendor.name, url)

    # -- the technician's side ------------------------------------------------------------
    async def open(self, token: str) -> InvitationView:
        """What the link's page shows; :class:`LinkRefused` if it may not be used."""
        async with self.ctx.store.session() as db:
            row, vendor = await self._usable(db, token)
        return InvitationView(row, vendor.name, None)

    async def complete(self, token: str, name: str, key_text: str) -> Technician:
        """Spend the link: the technician ``name`` with this key, disabled and pending
        approval. A bad name or key leaves the link unspent (the page says what to fix)."""
        valid_name("technician", name)
        key = check_key(key_text)
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            row, vendor = await self._usable(db, token)
            if await maybe_by_name(db, Technician, name):
                raise Conflict(f"the user name {name!r} is taken: choose another")
            spent = await db.exec(update(Invitation).where(
                col(Invitation.id) == row.id, col(Invitation.state) == rules.OPEN)
                .values(state=rules.PENDING, used_at=now))
            if spent.rowcount != 1:
                raise LinkRefused(rules.USED)
            tech = Technician(name=name, vendor=vendor.name, vendor_id=vendor.id,
                              email=row.email, disabled=True, created_at=now)
            db.add(tech)
            try:
                await db.flush()
            except IntegrityError:
                raise Conflict(f"the user name {name!r} is taken: choose another") from None
            assert tech.id is not None
            fingerprint = key.get_fingerprint()
            db.add(TechnicianKey(technician_id=tech.id, fingerprint=fingerprint,
                                 public_key=key.export_public_key().decode().strip(),
                                 comment=key.get_comment()))
            await db.exec(update(Invitation).where(
                col(Invitation.id) == row.id).values(technician_id=tech.id))
            actor = f"invitee:{row.email}"[:200]
            await self.ctx.audit(db, "invitation.used", actor, vendor.name,
                                 invitation=row.id, technician=name)
            await self.ctx.audit(db, "technician.added", actor, name, vendor=vendor.name,
                                 keys=[fingerprint], expires_at=None, via="invitation")
            await self.ctx.audit(db, "technician.pending", actor, name, vendor=vendor.name,
                                 invitation=row.id, email=row.email)
        return tech

    async def enrolled(self, token: str) -> InvitationView:
        """The invitation a spent link enrolled (for the pages after enrolment)."""
        parsed = rules.parse_token(web_secret(self.ctx), rules.INVITE, token)
        async with self.ctx.store.session() as db:
            row = await db.get(Invitation, parsed.row_id)
            if row is None or not rules.hash_matches(row.token_hash, parsed.token_hash):
                raise LinkRefused(rules.TAMPERED)
            vendor = await db.get(Vendor, row.vendor_id)
            tech = await db.get(Technician, row.technician_id) if row.technician_id else None
        return InvitationView(row, vendor.name if vendor else "", tech.name if tech else None)

    async def _usable(self, db: AsyncSession, token: str) -> tuple[Invitation, Vendor]:
        parsed = rules.parse_token(web_secret(self.ctx), rules.INVITE, token)
        row = await db.get(Invitation, parsed.row_id)
        if row is None or not rules.hash_matches(row.token_hash, parsed.token_hash):
            raise LinkRefused(rules.TAMPERED)
        if row.state == rules.CANCELLED:
            raise LinkRefused(rules.WITHDRAWN)
        if row.state != rules.OPEN:
            raise LinkRefused(rules.USED)
        if row.expires_at <= self.ctx.now():
            raise LinkRefused(rules.EXPIRED)
        vendor = await db.get(Vendor, row.vendor_id)
        if vendor is None or _vendor_refusal(vendor, self.ctx.now()) is not None:
            raise LinkRefused(rules.WITHDRAWN)
        if not email_in_domains(row.email, vendor.domains):
            raise LinkRefused(rules.WRONG_DOMAIN)
        return row, vendor

    # -- the hospital's side ------------------------------------------------------------
    async def find(self, vendor: str | None = None, state: str | None = None
                   ) -> list[InvitationView]:
        if state is not None and state not in (*rules.STATES, "expired"):
            raise UsageError(f"state {state!r}: expected one of {', '.join(rules.STATES)},"
                             " expired")
        async with self.ctx.store.session() as db:
            query = select(Invitation, Vendor).join(Vendor).order_by(col(Invitation.id))
            if vendor is not None:
                query = query.where(Vendor.name == (await by_name(db, Vendor, vendor)).name)
            rows = (await db.exec(query)).all()
            techs = {t.id: t.name for t in (await db.exec(select(Technician).where(
                col(Technician.id).in_([r.technician_id for r, _ in rows
                                        if r.technician_id is not None])))).all()}
        views = [InvitationView(r, v.name, techs.get(r.technician_id)) for r, v in rows]
        if state is not None:
            views = [v for v in views if shown_state(v.invitation, self.ctx.now()) == state]
        return views

    async def pending(self) -> list[InvitationView]:
        return await self.find(state=rules.PENDING)

    async def decide(self, tech_name: str, approve: bool) -> InvitationView:
        """Approve (enable) or reject (keep disabled) a technician awaiting approval."""
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            tech = await by_name(db, Technician, tech_name)
            row = (await db.exec(select(Invitation).where(
                Invitation.technician_id == tech.id))).first()
            if row is None or row.state != rules.PENDING:
                raise Conflict(f"technician {tech_name!r} is not awaiting approval"
                               + (f" (it was {row.state})" if row is not None else ""))
            vendor = await db.get(Vendor, row.vendor_id)
            assert vendor is not None
            row.state = rules.APPROVED if approve else rules.REJECTED
            row.decided_by, row.decided_at = self.actor[:200], now
            db.add(row)
            if approve:
                tech.disabled, tech.enabled_at = False, now
                db.add(tech)
            await self.ctx.audit(db, "technician.approved" if approve else
                                 "technician.rejected", self.actor, tech_name,
                                 vendor=vendor.name, invitation=row.id)
            contact = vendor.contact
        if approve:
            await self._tell_approved(tech, vendor.name, contact)
        return InvitationView(row, vendor.name, tech.name)

    async def withdraw(self, invitation_id: int) -> InvitationView:
        """Take back an invitation whose link was not used yet: the link stops working at
        once (a technician who already enrolled is rejected instead, with ``decide``)."""
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            row = await db.get(Invitation, invitation_id)
            if row is None:
                raise NotFound(f"no invitation with id {invitation_id}")
            taken = await db.exec(update(Invitation).where(
                col(Invitation.id) == invitation_id, col(Invitation.state) == rules.OPEN)
                .values(state=rules.CANCELLED, decided_by=self.actor[:200], decided_at=now))
            vendor = await db.get(Vendor, row.vendor_id)
            assert vendor is not None
            if taken.rowcount != 1:
                await db.refresh(row)
                hint = (f": reject the technician with 'broker tech reject"
                        f" {await _technician_name(db, row)}'" if row.state == rules.PENDING
                        else "")
                raise Conflict(f"invitation {invitation_id} is {row.state}, not open{hint}")
            await self.ctx.audit(db, "invitation.withdrawn", self.actor, vendor.name,
                                 invitation=invitation_id, email=row.email)
            await db.refresh(row)
        return InvitationView(row, vendor.name, None)

    async def _tell_approved(self, tech: Technician, vendor: str, contact: str | None) -> None:
        public = self.ctx.config.settings.broker.public_url
        host = public.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        body = (f"The technician account {tech.name} of {vendor} was approved and can now ask"
                f" for access to devices:\n\n    ssh -p 2222 {tech.name}@{host}\n")
        for to, who in ((contact, vendor), (tech.email, tech.name)):
            if not to:
                continue
            failure = await send_now(self.ctx, to, who,
                                     f"Technician {tech.name} approved", body)
            if failure is not None:
                async with self.ctx.store.session() as db:
                    await self.ctx.audit(db, "notification.failed", self.actor, tech.name,
                                         channel="email", recipient=to, error=failure,
                                         about="technician.approved")


async def _technician_name(db: AsyncSession, row: Invitation) -> str:
    tech = await db.get(Technician, row.technician_id) if row.technician_id else None
    return tech.name if tech is not None else "NAME"


def shown_state(row: Invitation, now: datetime) -> str:
    """open / expired / pending / approved / rejected / withdrawn."""
    if row.state == rules.OPEN and row.expires_at <= now:
        return "expired"
    return row.state


async def awaiting_decision(ctx: Context, tech_name: str) -> str | None:
    """``pending`` or ``rejected`` when the technician came by invitation and no admin has
    approved it (it may not be enabled any other way), else None."""
    async with ctx.store.session() as db:
        tech = await maybe_by_name(db, Technician, tech_name)
        if tech is None:
            raise NotFound(f"no technician named {tech_name!r}")
        row = (await db.exec(select(Invitation).where(
            Invitation.technician_id == tech.id))).first()
    if row is not None and row.state in (rules.PENDING, rules.REJECTED):
        return row.state
    return None


def _vendor_refusal(vendor: Vendor, now: datetime) -> str | None:
    if vendor.disabled:
        return f"vendor {vendor.name!r} is disabled"
    if vendor.contract_end is not None and vendor.contract_end <= now:
        return f"vendor {vendor.name!r}'s contract ended on {shown_end(vendor.contract_end)}"
    return None


def _invite_body(vendor: str, url: str, expires_at: datetime) -> str:
    return (f"You are invited to service medical devices for {vendor} through the hospital's"
            f" vendor access broker.\n\nOpen this link to choose your user name and give your"
            f" SSH public key (it works once, until"
            f" {expires_at.strftime('%Y-%m-%d %H:%M UTC')}):\n\n{url}\n\n"
            "A hospital administrator approves your account before you can ask for access."
            "\nIf you did not expect this message, ignore it.\n")
