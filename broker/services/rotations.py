"""Rotation bookkeeping in the store: which device's credential is due for rotation, which
node is working it (a lease, so exactly one node does), and what a failure or success
changes. The rotation itself (SSH to the device) is in ``broker.credentials.rotation``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlmodel import and_, col, delete, or_, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.domain.rotation import (
    LEASE,
    SETTLE,
    due_after_grant_end,
    is_claimable,
    lease_free,
    retry_delay,
)
from broker.services.context import Context
from broker.store.models import Device, DeviceCredential, Grant, Session

# Sessions of a grant that ended are cut within a second; wait at most this long for them.
CLOSING_GRACE = timedelta(minutes=1)


async def grant_ended(ctx: Context, db: AsyncSession, device_id: int, grant_id: int | None,
                      how: str) -> None:
    """A grant on ``device_id`` expired or was revoked: rotate its credential if it is marked
    ``rotate``. Called inside the transaction that ends the grant."""
    device = await db.get(Device, device_id)
    if device is None or not device.rotate:
        return
    mark_due(device, due_after_grant_end(ctx.now(), device.rotation_due_at),
             f"grant {grant_id} {how}")
    db.add(device)


async def device_retired(ctx: Context, db: AsyncSession, device: Device, actor: str) -> None:
    """A device is being retired (in ``db``'s transaction). A ``rotate`` device gets a final
    rotation, after which its secrets are deleted (``broker.credentials.rotation``). The
    credential of any other device is managed outside the broker, which must not change it:
    its secrets are deleted from the vault now."""
    if device.rotate:
        mark_due(device, ctx.now(), "device retired")
        return
    await delete_secrets(ctx, db, device, actor, "device retired (not marked rotate)")


async def delete_secrets(ctx: Context, db: AsyncSession, device: Device, actor: str,
                         reason: str) -> None:
    await db.exec(delete(DeviceCredential).where(
        col(DeviceCredential.device_id) == device.id))
    device.rotation_due_at = device.rotation_reason = None
    await ctx.audit(db, "device.secrets_deleted", actor, device.name, reason=reason)


def mark_due(device: Device, when: datetime, reason: str) -> None:
    if device.rotation_due_at is None or when < device.rotation_due_at:
        device.rotation_due_at = when
        device.rotation_reason = reason[:200]


async def claim(ctx: Context, device_id: int, *, on_demand: bool = False) -> bool:
    """Take the lease on ``device_id``'s rotation for this node. A due rotation is claimable
    when nobody holds an unexpired lease; ``on_demand`` (``broker device rotate``) also claims
    one that is not due. True if this call won."""
    now = ctx.now()
    free = or_(col(Device.rotation_claimed_until).is_(None),
               col(Device.rotation_claimed_until) <= now)
    conditions = [col(Device.id) == device_id, free]
    if not on_demand:
        conditions.append(col(Device.rotation_due_at) <= now)
    async with ctx.store.session() as db:
        result = await db.exec(
            update(Device).where(*conditions)
            .values(rotation_claimed_by=ctx.node, rotation_claimed_until=now + LEASE)
            .execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)


async def release(ctx: Context, device_id: int) -> None:
    async with ctx.store.session() as db:
        await db.exec(update(Device).where(col(Device.id) == device_id,
                                           col(Device.rotation_claimed_by) == ctx.node)
                      .values(rotation_claimed_by=None, rotation_claimed_until=None)
                      .execution_options(synchronize_session=False))


def succeeded(device: Device, now: datetime) -> None:
    """Clear what a successful rotation settles (in the caller's transaction)."""
    device.rotation_due_at, device.rotation_reason, device.rotation_attempts = None, None, 0
    device.rotated_at = now


def failed(device: Device, now: datetime) -> datetime:
    """Count a failure and schedule the retry; returns when it is."""
    device.rotation_attempts += 1
    device.rotation_due_at = now + retry_delay(device.rotation_attempts)
    if device.rotation_reason is None:
        device.rotation_reason = "retry of an on-demand rotation"
    return device.rotation_due_at


async def due_devices(ctx: Context) -> list[int]:
    """Devices whose rotation is due now and not leased to a node, earliest first."""
    now = ctx.now()
    async with ctx.store.session() as db:
        rows = (await db.exec(select(Device.id, Device.rotation_due_at,
                                     Device.rotation_claimed_until)
                              .where(col(Device.rotation_due_at) <= now)
                              .order_by(col(Device.rotation_due_at)))).all()
    return [ident for ident, due, leased in rows
            if ident is not None and is_claimable(due, leased, now)]


async def next_due(ctx: Context) -> datetime | None:
    """The earliest moment a rotation can be worked: when it falls due, or when the lease
    a node holds on it runs out, whichever is later."""
    async with ctx.store.session() as db:
        rows = (await db.exec(select(Device.rotation_due_at, Device.rotation_claimed_until)
                              .where(col(Device.rotation_due_at).is_not(None)))).all()
    return min((max(due, leased or due) for due, leased in rows if due is not None),
               default=None)


async def credentials_of(db: AsyncSession, device_id: int) -> list[DeviceCredential]:
    return list((await db.exec(select(DeviceCredential).where(
        DeviceCredential.device_id == device_id).order_by(col(DeviceCredential.id)))).all())


async def postpone_while_closing(ctx: Context, device_id: int) -> bool:
    """Never rotate under a session of a grant that just ended (it is being cut): if one is
    still live, move the rotation a few seconds on and say so."""
    now = ctx.now()
    recent = now - CLOSING_GRACE
    async with ctx.store.session() as db:
        closing = (await db.exec(select(Session.id).join(Grant).where(
            Session.device_id == device_id, Session.state == "live",
            or_(and_(col(Grant.end) <= now, col(Grant.end) > recent),
                col(Grant.revoked_at) > recent)))).first()
        if closing is None:
            return False
        device = await db.get(Device, device_id)
        if device is not None and device.rotation_due_at is not None:
            device.rotation_due_at = now + SETTLE
            db.add(device)
    return True


async def wait_for_sessions_to_end(ctx: Context, device_id: int, seconds: float = 5.0) -> None:
    """Give the sessions being cut on a device (by ``broker serve``, within a second) a few
    seconds to end before the device's credential changes under them."""
    for _ in range(int(seconds / 0.25)):
        async with ctx.store.session() as db:
            live = (await db.exec(select(Session.id).where(
                Session.device_id == device_id, Session.state == "live"))).first()
        if live is None:
            return
        await asyncio.sleep(0.25)


async def wait_for_other_node(ctx: Context, device_id: int, seconds: float = 60.0
                              ) -> Device | None:
    """The device once no node holds its rotation lease any more (the rotation another node
    was working is over, done or failed), or None if it still holds it after ``seconds``."""
    for _ in range(int(seconds / 0.25)):
        async with ctx.store.reading() as db:
            device = await db.get(Device, device_id)
        if device is None:
            return None
        if lease_free(device.rotation_claimed_until, ctx.now()):
            return device
        await asyncio.sleep(0.25)
    return None
