"""Session rows, login events, and what the SSH layer needs from the store about a device."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, insert, update
from sqlmodel import Session as DbSession
from sqlmodel import col, or_, select

from broker import metrics
from broker.domain.text import KILL_REASON, visible
from broker.errors import Conflict, DeviceError, NotFound
from broker.services.context import Context
from broker.services.text import free_text
from broker.store.models import (
    Device,
    DeviceCredential,
    Grant,
    Session,
    Technician,
)


def new_session_id(now: datetime) -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class DeviceLogin:
    """Everything needed to log in to a device. ``secret`` never leaves the broker."""

    device_id: int
    name: str
    host: str
    port: int
    user: str
    kind: str
    secret: bytes
    host_key: str | None


async def device_login(ctx: Context, device_id: int) -> DeviceLogin:
    device, credential = await ctx.store.run(_device_and_credential, device_id)
    if device is None or credential is None:
        raise DeviceError(f"device {device_id} has no credential in the vault")
    return DeviceLogin(device_id, device.name, device.host, device.port, device.login_user,
                       credential.kind, ctx.vault.open(credential.secret), device.host_key)


# built once (building and keying a statement costs more than running it)
_CURRENT_CREDENTIAL = select(DeviceCredential).where(
    DeviceCredential.device_id == bindparam("device"), DeviceCredential.current
).order_by(col(DeviceCredential.id).desc()).limit(1)


def _device_and_credential(db: DbSession, device_id: int
                           ) -> tuple[Device | None, DeviceCredential | None]:
    device = db.get(Device, device_id)
    credential = db.exec(_CURRENT_CREDENTIAL, params={"device": device_id}).first()
    return device, credential


async def pin_host_key(ctx: Context, device_id: int, host_key: str) -> None:
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        if device is None or device.host_key is not None:
            return
        device.host_key = host_key
        db.add(device)
        await ctx.audit(db, "device.host_key_pinned", "broker", device.name, host_key=host_key)


async def audit_event(ctx: Context, kind: str, actor: str, subject: str | None = None,
                      **data: object) -> None:
    await ctx.audit_alone(kind, actor, subject, **data)


# built once (building and keying a statement costs more than running it): a session's row
# is written at its start and at its end, on every session's path
_INSERT_SESSION = insert(Session)
_END_SESSION = (
    update(Session)
    .where(col(Session.id) == bindparam("session"), col(Session.ended_at).is_(None))
    .values(ended_at=bindparam("now"), end_reason=bindparam("reason"),
            state=case((col(Session.state) == "live", "closed"), else_=col(Session.state)))
    .returning(col(Session.grant_id), col(Session.kill_reason)))


async def open_session(ctx: Context, grant: Grant, tech: Technician, device: Device,
                       client: str, channel: str, recording: str | None,
                       session_id: str) -> None:
    row = Session(id=session_id, grant_id=grant.id or 0, technician_id=tech.id or 0,
                  device_id=device.id or 0, node=ctx.node, client_addr=client,
                  recording=recording, started_at=ctx.now())

    def write(db: DbSession) -> None:
        db.connection().execute(_INSERT_SESSION, row.model_dump())
        ctx.append_audit(db, "session.started", f"technician:{tech.name}", f"session:{row.id}",
                         grant=grant.id, device=device.name, client=client, channel=channel,
                         node=ctx.node, recording=recording)

    await ctx.store.run_write(write)


async def close_session(ctx: Context, session_id: str, reason: str,
                        exit_status: int | None = None) -> None:
    now = ctx.now()

    def write(db: DbSession) -> tuple[str, Grant | None] | None:
        ended = db.connection().execute(
            _END_SESSION, {"session": session_id, "now": now, "reason": reason}).first()
        if ended is None:  # no such session, or it had ended already
            return None
        grant_id, kill_reason = ended
        ctx.append_audit(db, "session.ended", "broker", f"session:{session_id}", reason=reason,
                         exit_status=exit_status)
        outcome = metrics.session_outcome(
            reason, None if kill_reason is None else visible(kill_reason))
        grant = db.get(Grant, grant_id) if outcome in ("expired", "revoked") else None
        return outcome, grant

    closed = await ctx.store.run_write(write)
    if closed is None:
        return
    outcome, grant = closed
    metrics.session_ended(outcome, closed_at=now,
                          grant_end=grant.end if grant else None,
                          revoked_at=grant.revoked_at if grant else None)


async def mark_interrupted(ctx: Context, *, workers_of: str | None = None) -> list[Session]:
    """Sessions this node left live when it stopped (crash, kill -9): mark them
    interrupted, so that they are never mistaken for running ones. ``workers_of``: a
    node starting its workers (none runs yet): also those of the node under that name and of
    all its workers of an earlier run (``NODE/wINDEX``)."""
    whose = col(Session.node) == ctx.node
    if workers_of is not None:
        whose = or_(whose, Session.node == workers_of,
                    col(Session.node).startswith(f"{workers_of}/w", autoescape=True))
    async with ctx.store.session() as db:
        rows = (await db.exec(select(Session).where(whose, Session.state == "live"))).all()
        for row in rows:
            row.state, row.ended_at, row.end_reason = "interrupted", ctx.now(), "broker stopped"
            db.add(row)
            await ctx.audit(db, "session.interrupted", "broker", f"session:{row.id}",
                            node=row.node, recording=row.recording)
    for _row in rows:
        metrics.session_ended("interrupted")
    return list(rows)


@dataclass(frozen=True)
class LiveSessionView:
    session: Session
    technician: str
    device: str


def _with_names() -> Any:
    return (select(Session, Technician.name, Device.name)
            .join(Technician, col(Technician.id) == col(Session.technician_id))
            .join(Device, col(Device.id) == col(Session.device_id)))


async def live_session_views(ctx: Context) -> list[LiveSessionView]:
    """Every live session, on every node sharing this database, newest first, with the
    technician's and device's names."""
    async with ctx.store.session() as db:
        rows = (await db.exec(_with_names().where(Session.state == "live")
                              .order_by(col(Session.started_at).desc()))).all()
    return [LiveSessionView(row, tech, device) for row, tech, device in rows]


async def session_view(ctx: Context, session_id: str) -> LiveSessionView | None:
    """One session, live or not, with the technician's and device's names."""
    async with ctx.store.session() as db:
        row = (await db.exec(_with_names().where(Session.id == session_id))).first()
    return None if row is None else LiveSessionView(*row)


async def kill_session(ctx: Context, session_id: str, actor: str,
                       reason: str = "an operator ended this session") -> Session:
    """Ask for a live session to be cut, from any node: the node holding it sees the audit
    event on its change feed and ends it within a second."""
    reason = await free_text(ctx, actor, f"session:{session_id}"[:200], KILL_REASON, reason)
    async with ctx.store.session() as db:
        row = await db.get(Session, session_id)
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        if row.state != "live":
            raise Conflict(f"session {session_id} is not live (it is {row.state})")
        row.kill_reason = reason
        db.add(row)
        await ctx.audit(db, "session.kill_requested", actor, f"session:{session_id}",
                        node=row.node, reason=reason)
    return row


async def kill_reason(ctx: Context, session_id: str) -> str | None:
    """Why the session is to be cut (None: it is not), fit to show the technician: a reason
    stored before the text rule is shown escaped, never sent raw to their terminal."""
    async with ctx.store.session() as db:
        row = await db.get(Session, session_id)
        return None if row is None or row.kill_reason is None else visible(row.kill_reason)
