"""Server-side staff sessions: the browser holds a random id, the database its SHA-256.

A session ends after :data:`IDLE_TIMEOUT` without a request, after :data:`ABSOLUTE_TIMEOUT`
whatever happens, at logout, or when the account is disabled. A session whose password step
passed but whose TOTP step has not (``mfa_pending``) lives :data:`MFA_TIMEOUT` and grants
nothing but the TOTP form; passing it replaces the session with a fresh id.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import col, delete, select

from broker.services.context import Context
from broker.store.models import StaffSession, StaffUser

IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
MFA_TIMEOUT = timedelta(minutes=5)
TOUCH_AFTER = timedelta(seconds=30)  # last_seen is written at most this often


@dataclass(frozen=True)
class SignedIn:
    session: StaffSession
    user: StaffUser

    @property
    def actor(self) -> str:
        return f"staff:{self.user.name}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(ctx: Context, user: StaffUser, address: str | None,
                mfa_pending: bool = False, via: str = "password") -> str:
    """Open a session for ``user``; return the cookie value (shown to nobody else)."""
    token = secrets.token_urlsafe(32)
    now = ctx.now()
    async with ctx.store.session() as db:
        db.add(StaffSession(
            token_hash=token_hash(token), user_id=user.id or 0, mfa_pending=mfa_pending,
            csrf_binding=secrets.token_hex(16), address=(address or "")[:100] or None, via=via,
            created_at=now, last_seen=now,
            expires_at=now + (MFA_TIMEOUT if mfa_pending else ABSOLUTE_TIMEOUT)))
    return token


async def find(ctx: Context, token: str | None) -> SignedIn | None:
    """The live session behind a cookie value, touched; None when there is none (expired
    sessions are deleted on the way)."""
    if not token or len(token) > 200:
        return None
    now = ctx.now()
    async with ctx.store.session() as db:
        row = (await db.exec(select(StaffSession, StaffUser).join(StaffUser).where(
            StaffSession.token_hash == token_hash(token)))).first()
        if row is None:
            return None
        session, user = row
        if now >= session.expires_at or now >= session.last_seen + IDLE_TIMEOUT \
                or user.disabled:
            await db.delete(session)
            return None
        if now - session.last_seen >= TOUCH_AFTER:
            session.last_seen = now
            db.add(session)
    return SignedIn(session, user)


async def end(ctx: Context, session: StaffSession) -> None:
    async with ctx.store.session() as db:
        await db.exec(delete(StaffSession).where(
            col(StaffSession.id) == session.id))


async def complete_mfa(ctx: Context, pending: SignedIn, address: str | None) -> str:
    """The TOTP step passed: replace the pending session by a full one with a new id."""
    await end(ctx, pending.session)
    return await start(ctx, pending.user, address)


async def purge_expired(ctx: Context) -> int:
    """Delete sessions past their absolute expiry (idle ones go when next presented)."""
    async with ctx.store.session() as db:
        result = await db.exec(delete(StaffSession).where(
            col(StaffSession.expires_at) <= ctx.now()))
        return int(result.rowcount or 0)
