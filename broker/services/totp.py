"""TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps), for technicians and for
staff accounts alike: :func:`check_code` is the one verifier.

The secret is kept vault-encrypted in the account's ``totp_secret``. A code is accepted in the
current step or one step either side, compared in constant time, and only once: the newest
accepted step is stored in ``Technician.totp_last_step`` and a code for that step or an older
one is refused (the update is a conditional ``UPDATE``, so two logins racing with the same
code cannot both win, on SQLite or PostgreSQL).
"""

from __future__ import annotations

import pyotp
from sqlalchemy import or_, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.services.context import Context
from broker.services.lookup import by_name, maybe_by_name
from broker.store.models import StaffUser, Technician

Account = Technician | StaffUser

ISSUER = "Vendor Access Broker"
VALID_WINDOW = 1  # steps accepted either side of the current one
DIGITS = 6


async def enroll(ctx: Context, actor: str, tech_name: str) -> tuple[str, str]:
    """Give ``tech_name`` a new TOTP secret (replacing any old one); return the secret and its
    ``otpauth://`` URI for an authenticator app."""
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name=tech_name, issuer_name=ISSUER)
    async with ctx.store.session() as db:
        tech = await by_name(db, Technician, tech_name)
        replaced = tech.totp_secret is not None
        tech.totp_secret = ctx.vault.seal(secret.encode())
        tech.totp_last_step = None
        db.add(tech)
        await ctx.audit(db, "technician.totp_enrolled", actor, tech_name, replaced=replaced)
    return secret, uri


async def enrolled(ctx: Context, tech_name: str) -> bool:
    """Has ``tech_name`` a TOTP secret?"""
    async with ctx.store.reading() as db:
        tech = await maybe_by_name(db, Technician, tech_name)
    return tech is not None and tech.totp_secret is not None


async def verify(ctx: Context, tech_name: str, code: str) -> bool:
    """Is ``code`` a valid, not yet used TOTP code of ``tech_name`` now? A failure is audited
    as ``login.totp_failed`` with the reason (never the code)."""
    candidate = "".join(code.split())
    async with ctx.store.session() as db:
        tech = await maybe_by_name(db, Technician, tech_name)
        reason: str | None
        if tech is None:
            reason = "unknown technician"
        elif tech.disabled:
            reason = "technician disabled"
        else:
            reason = await check_code(ctx, db, tech, candidate)
        if reason is not None:
            await ctx.audit(db, "login.totp_failed", f"technician:{tech_name}", tech_name,
                            reason=reason)
            return False
    return True


def _matching_step(secret: str, code: str, ctx: Context) -> int | None:
    """The time step (within the window) whose code equals ``code``; every candidate is
    compared, each in constant time, so timing reveals neither the match nor its position."""
    totp = pyotp.TOTP(secret, digits=DIGITS)
    current = totp.timecode(ctx.now())
    found: int | None = None
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if pyotp.utils.strings_equal(code, totp.generate_otp(step)) and found is None:
            found = step
    return found


async def check_code(ctx: Context, db: AsyncSession, account: Account, code: str) -> str | None:
    """None if ``code`` is ``account``'s valid, not yet used code now (and it is now used);
    else why not: not enrolled, malformed code, wrong code, code already used."""
    candidate = "".join(code.split())
    if account.totp_secret is None:
        return "not enrolled"
    if len(candidate) != DIGITS or not candidate.isascii() or not candidate.isdigit():
        return "malformed code"
    step = _matching_step(ctx.vault.open(account.totp_secret).decode(), candidate, ctx)
    if step is None:
        return "wrong code"
    if not await _claim_step(db, account, step):
        return "code already used"
    return None


async def _claim_step(db: AsyncSession, account: Account, step: int) -> bool:
    """Record ``step`` as used unless it (or a later one) already is; True if this call won."""
    model = type(account)
    result = await db.exec(
        update(model)
        .where(col(model.id) == account.id,
               or_(col(model.totp_last_step).is_(None), col(model.totp_last_step) < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False))
    return bool(result.rowcount == 1)
