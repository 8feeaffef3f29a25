"""The TOTP step of onboarding: when a policy that can apply to the vendor's technicians
requires a TOTP code, the technician who just enrolled by invitation gets a secret (shown
once, as a QR code and as text: the existing enrolment, :func:`broker.services.totp.enroll`)
and confirms it with one code. Both steps need the invitation's link, spent by the
enrolment a moment ago (state ``pending``, within :data:`WINDOW` of its use); the code is
checked by the one verifier, :func:`broker.services.totp.check_code`."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from broker.domain import invitations as rules
from broker.domain.invitations import LinkRefused
from broker.errors import Conflict, Refused
from broker.services import totp
from broker.services.context import Context
from broker.services.invitations import web_secret
from broker.store.models import Invitation, Technician, Vendor

WINDOW = timedelta(minutes=30)


def totp_required(ctx: Context, vendor: str) -> bool:
    """Whether any policy that can apply to this vendor's technicians requires TOTP."""
    return any(p.rules.require_totp for p in ctx.policies()
               if p.vendors is None or vendor in p.vendors)


async def _enrolled_by(ctx: Context, token: str) -> tuple[Invitation, Technician]:
    parsed = rules.parse_token(web_secret(ctx), rules.INVITE, token)
    async with ctx.store.session() as db:
        row = await db.get(Invitation, parsed.row_id)
        if row is None or not rules.hash_matches(row.token_hash, parsed.token_hash):
            raise LinkRefused(rules.TAMPERED)
        if row.state == rules.OPEN or row.technician_id is None:
            raise Refused("enrol first: choose a user name and give your SSH key")
        if row.state != rules.PENDING or row.used_at is None \
                or row.used_at + WINDOW <= ctx.now():
            raise LinkRefused(rules.USED)
        tech = await db.get(Technician, row.technician_id)
    assert tech is not None
    return row, tech


async def enrol(ctx: Context, token: str) -> tuple[str, str] | None:
    """A TOTP secret and its otpauth URI for the technician this link just enrolled, if a
    policy requires TOTP; None if none does. Once only: a second call is a Conflict."""
    row, tech = await _enrolled_by(ctx, token)
    async with ctx.store.session() as db:
        vendor = await db.get(Vendor, row.vendor_id)
    if vendor is None or not totp_required(ctx, vendor.name):
        return None
    if tech.totp_secret is not None:
        raise Conflict("your authenticator was already set up: ask the hospital to enrol it"
                       " again if you lost it")
    return await totp.enroll(ctx, f"invitee:{row.email}"[:200], tech.name)


async def confirm(ctx: Context, token: str, code: str) -> bool:
    """Check one code from the technician's new authenticator (audited either way)."""
    row, tech = await _enrolled_by(ctx, token)
    actor = f"invitee:{row.email}"[:200]
    async with ctx.store.session() as db:
        fresh = (await db.exec(select(Technician).where(Technician.id == tech.id))).one()
        if fresh.totp_secret is None:
            raise Refused("no authenticator to confirm: reload the enrolment page")
        reason = await totp.check_code(ctx, db, fresh, "".join(code.split())[:12])
        if reason is not None:
            await ctx.audit(db, "login.totp_failed", actor, tech.name, reason=reason,
                            via="onboarding")
            return False
        await ctx.audit(db, "technician.totp_confirmed", actor, tech.name,
                        invitation=row.id)
    return True
