"""Signing a browser in to one grant's device web UI.

An SSH key cannot be used in a browser, so ``ssh TECH@broker weblogin DEVICE`` (already
authenticated by the key) asks for a one-time link: a random token, stored only as its
SHA-256, bound to technician, grant and device, valid for :data:`SIGNIN_TTL`, usable once.
Redeeming it creates a web session whose cookie (again stored as a hash) is scoped to that
grant and is refused as soon as the grant no longer allows ``web``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import col, select, update

from broker.domain.protocols import Protocol
from broker.errors import Refused
from broker.services.context import Context
from broker.services.device_web import load_target
from broker.services.grants import check_access
from broker.services.vendors import note_login
from broker.store.models import Device, Grant, Technician, WebSession, WebSignin

SIGNIN_TTL = timedelta(minutes=5)
INVALID_LINK = ("this sign-in link is not valid (already used, expired or mistyped); ask for a"
                " new one with: ssh TECH@BROKER weblogin DEVICE")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_signin(ctx: Context, tech_name: str, device_name: str, client: str
                        ) -> tuple[str, WebSignin]:
    """A fresh one-time token for ``tech_name``'s grant on ``device_name``, or Refused."""
    access = await check_access(ctx, tech_name, device_name, Protocol.WEB)
    actor = f"technician:{tech_name}"
    if not access.allowed or access.grant is None or access.device is None:
        async with ctx.store.session() as db:
            await ctx.audit(db, "web.signin_refused", actor, device_name, client=client,
                            reason=access.decision.detail)
        raise Refused(f"{device_name}: {access.decision.detail}")
    await load_target(ctx, access.device.id or 0)  # refuse now if the device has no web UI
    assert access.technician is not None
    token = secrets.token_urlsafe(32)
    now = ctx.now()
    row = WebSignin(token_hash=digest(token), technician_id=access.technician.id or 0,
                    grant_id=access.grant.id or 0, device_id=access.device.id or 0,
                    created_at=now, expires_at=now + SIGNIN_TTL)
    async with ctx.store.session() as db:
        db.add(row)
        await ctx.audit(db, "web.signin_link", actor, device_name, grant=access.grant.id,
                        client=client, expires_at=row.expires_at.isoformat())
    return token, row


@dataclass
class SigninView:
    signin: WebSignin
    technician: Technician
    device: Device
    grant: Grant


async def peek(ctx: Context, token: str) -> SigninView | None:
    """The link's details if it can still be redeemed (nothing changes)."""
    async with ctx.store.session() as db:
        row = (await db.exec(select(WebSignin).where(
            WebSignin.token_hash == digest(token)))).first()
        if row is None or row.used_at is not None or row.expires_at <= ctx.now():
            return None
        tech = await db.get(Technician, row.technician_id)
        device = await db.get(Device, row.device_id)
        grant = await db.get(Grant, row.grant_id)
    if tech is None or device is None or grant is None:
        return None
    return SigninView(row, tech, device, grant)


async def session_parties(ctx: Context, row: WebSession
                          ) -> tuple[Technician | None, Device | None, Grant | None]:
    """Who and what a web session is for, as the database has them now (None: deleted)."""
    async with ctx.store.session() as db:
        return (await db.get(Technician, row.technician_id),
                await db.get(Device, row.device_id), await db.get(Grant, row.grant_id))


async def redeem(ctx: Context, token: str, client: str) -> tuple[WebSession, str, SigninView]:
    """Use the link once: a new web session and its cookie value, or Refused."""
    view = await peek(ctx, token)
    now = ctx.now()
    if view is None:
        async with ctx.store.session() as db:
            await ctx.audit(db, "web.signin_refused", f"web:{client}", None, client=client,
                            reason="invalid, used or expired link")
        raise Refused(INVALID_LINK)
    actor = f"technician:{view.technician.name}"
    access = await check_access(ctx, view.technician.name, view.device.name, Protocol.WEB)
    if not access.allowed or access.grant is None or access.grant.id != view.grant.id:
        detail = access.decision.detail if not access.allowed else "the grant changed"
        async with ctx.store.session() as db:
            await ctx.audit(db, "web.signin_refused", actor, view.device.name, client=client,
                            grant=view.grant.id, reason=detail)
        raise Refused(f"{view.device.name}: {detail}")
    cookie = secrets.token_urlsafe(32)
    session = WebSession(id=secrets.token_hex(8), cookie_hash=digest(cookie),
                         grant_id=view.grant.id or 0, technician_id=view.technician.id or 0,
                         device_id=view.device.id or 0, client_addr=client[:200],
                         created_at=now)
    async with ctx.store.session() as db:
        used = await db.exec(update(WebSignin)
                             .where(col(WebSignin.id) == view.signin.id,
                                    col(WebSignin.used_at).is_(None))
                             .values(used_at=now))
        if used.rowcount != 1:  # someone else redeemed it a moment ago
            raise Refused(INVALID_LINK)
        db.add(session)
        await ctx.audit(db, "web.signin", actor, view.device.name, grant=view.grant.id,
                        web_session=session.id, client=client)
        await note_login(ctx, db, view.technician.name)
    return session, cookie, view


async def session_by_cookie(ctx: Context, cookie: str) -> WebSession | None:
    async with ctx.store.session() as db:
        return (await db.exec(select(WebSession).where(
            WebSession.cookie_hash == digest(cookie)))).first()


async def end_web_session(ctx: Context, web_session_id: str, reason: str) -> None:
    async with ctx.store.session() as db:
        row = await db.get(WebSession, web_session_id)
        if row is None or row.ended_at is not None:
            return
        row.ended_at, row.end_reason = ctx.now(), reason[:300]
        db.add(row)
        await ctx.audit(db, "web.session_ended", "broker", f"web:{web_session_id}",
                        grant=row.grant_id, reason=reason)
