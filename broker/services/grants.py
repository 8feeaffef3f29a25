"""Grants: listing, revoking, keeping stored states in step with the clock, and deciding
whether a connection may use one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam
from sqlmodel import Session, and_, col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.chain import lock_chain
from broker.domain.errors import InvalidTransition
from broker.domain.grants import (
    AccessDecision,
    GrantEvent,
    GrantState,
    GrantView,
    Refusal,
    Window,
    decide_access,
    next_grant_state,
    state_at,
)
from broker.domain.protocols import Protocol
from broker.domain.text import REVOKE_REASON
from broker.domain.vendors import refusal_for
from broker.errors import Conflict
from broker.services.context import Context
from broker.services.lookup import by_id, maybe_named
from broker.services.rotations import grant_ended as rotation_after_grant
from broker.services.text import free_text
from broker.services.vendors import is_awaiting_approval, state_of
from broker.store.models import Device, Grant, Technician, Vendor

LIVE_STATES = (GrantState.SCHEDULED.value, GrantState.ACTIVE.value)


@dataclass
class GrantRow:
    grant: Grant
    technician: Technician
    device: Device


@dataclass
class Access:
    """The outcome of an access check, with the rows the caller needs either way."""

    decision: AccessDecision
    technician: Technician | None
    device: Device | None
    grant: Grant | None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def view(grant: Grant) -> GrantView:
    return GrantView(id=grant.id or 0, window=Window(grant.start, grant.end),
                     protocols=frozenset(Protocol(p) for p in grant.protocols),
                     revoked=grant.state == GrantState.REVOKED.value,
                     revoke_reason=grant.revoke_reason)


class Grants:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def find(self, active_only: bool = False, unreviewed: bool = False) -> list[GrantRow]:
        await refresh_states(self.ctx)
        async with self.ctx.store.session() as db:
            query = (select(Grant, Technician, Device).join(Technician).join(Device)
                     .order_by(col(Grant.id)))
            if active_only:
                query = query.where(Grant.state == GrantState.ACTIVE.value)
            if unreviewed:
                query = query.where(Grant.breakglass, col(Grant.reviewed_at).is_(None))
            return [GrantRow(*row) for row in (await db.exec(query)).all()]

    async def show(self, ident: int) -> GrantRow:
        await refresh_states(self.ctx)
        async with self.ctx.store.session() as db:
            grant = await by_id(db, Grant, ident)
            tech, device = await db.get(Technician, grant.technician_id), await db.get(
                Device, grant.device_id)
            assert tech is not None and device is not None
            return GrantRow(grant, tech, device)

    async def revoke(self, ident: int, reason: str | None = None) -> Grant:
        reason = await free_text(self.ctx, self.actor, f"grant:{ident}", REVOKE_REASON, reason)
        async with self.ctx.store.session() as db:
            grant = await by_id(db, Grant, ident)
            current = state_at(Window(grant.start, grant.end), self.ctx.now(),
                               grant.state == GrantState.REVOKED.value)
            try:
                next_grant_state(current, GrantEvent.REVOKE)
            except InvalidTransition:
                raise Conflict(f"grant {ident} is {current}: there is nothing to revoke"
                               ) from None
            await _revoke(self.ctx, db, grant, self.actor, reason or "revoked")
        return grant


async def _revoke(ctx: Context, db: AsyncSession, grant: Grant, actor: str, reason: str) -> None:
    state = next_grant_state(GrantState(grant.state), GrantEvent.REVOKE)
    grant.state, grant.revoked_at, grant.revoke_reason = state.value, ctx.now(), reason
    db.add(grant)
    await ctx.audit(db, "grant.revoked", actor, f"grant:{grant.id}", reason=reason,
                    technician_id=grant.technician_id, device_id=grant.device_id)
    await rotation_after_grant(ctx, db, grant.device_id, grant.id, "revoked")


async def revoke_all_on_device(ctx: Context, db: AsyncSession, device: Device, actor: str,
                               reason: str) -> list[int]:
    grants = (await db.exec(select(Grant).where(Grant.device_id == device.id,
                                                col(Grant.state).in_(LIVE_STATES)))).all()
    for grant in grants:
        await _revoke(ctx, db, grant, actor, reason)
    return [g.id for g in grants if g.id is not None]


@dataclass(frozen=True)
class StateChange:
    grant_id: int
    state: GrantState


async def refresh_states(ctx: Context) -> list[StateChange]:
    """Bring stored grant states in step with the clock; audit each change."""
    now = ctx.now()
    changes: list[StateChange] = []
    async with ctx.store.session() as db:
        await lock_chain(db)  # every node and worker runs this: one at a time
        due = (await db.exec(select(Grant).where(
            col(Grant.state).in_(LIVE_STATES),
            or_(Grant.end <= now, and_(Grant.state == GrantState.SCHEDULED.value,
                                       Grant.start <= now))))).all()
        for grant in due:
            target = state_at(Window(grant.start, grant.end), now, revoked=False)
            if target.value == grant.state:
                continue
            event = GrantEvent.ACTIVATE if target is GrantState.ACTIVE else GrantEvent.EXPIRE
            state = next_grant_state(GrantState(grant.state), event)
            grant.state = state.value
            db.add(grant)
            kind = "grant.activated" if state is GrantState.ACTIVE else "grant.expired"
            await ctx.audit(db, kind, "broker", f"grant:{grant.id}",
                            at=(grant.start if state is GrantState.ACTIVE else grant.end))
            if state is GrantState.EXPIRED:
                await rotation_after_grant(ctx, db, grant.device_id, grant.id, "expired")
            changes.append(StateChange(grant.id or 0, state))
    return changes


async def next_deadline(ctx: Context) -> datetime | None:
    """The earliest start or end among grants that are not over yet."""
    async with ctx.store.session() as db:
        first_start = (await db.exec(select(func.min(Grant.start)).where(
            Grant.state == GrantState.SCHEDULED.value))).one()
        first_end = (await db.exec(select(func.min(Grant.end)).where(
            col(Grant.state).in_(LIVE_STATES)))).one()
    return min((m for m in (first_start, first_end) if m is not None), default=None)


async def check_access(ctx: Context, tech_name: str, device_name: str,
                       protocol: Protocol) -> Access:
    """May ``tech_name`` reach ``device_name`` over ``protocol`` now?"""
    now = ctx.now()
    facts = await ctx.store.run(_access_facts, tech_name, device_name, now)
    tech, vendor, device, pending, grants = facts
    if tech is None:
        return Access(AccessDecision(None, Refusal.NO_GRANT, "unknown technician"),
                      None, device, None)
    if device is None:
        return Access(AccessDecision(None, Refusal.UNKNOWN_DEVICE,
                                     f"there is no device named {device_name!r}"),
                      tech, None, None)
    refused = refusal_for(now, state_of(vendor), tech.disabled, tech.expires_at,
                          tech_pending=pending)
    if refused is not None:
        return Access(AccessDecision(None, *refused), tech, device, None)
    decision = decide_access([view(g) for g in grants], now, protocol, device.state,
                             technician_enabled=not tech.disabled)
    chosen = next((g for g in grants if decision.grant and g.id == decision.grant.id), None)
    return Access(decision, tech, device, chosen)


_AccessFacts = tuple[Technician | None, Vendor | None, Device | None, bool, list[Grant]]


# built once (building and keying a statement costs more than running it)
_TECH_AND_VENDOR = (select(Technician, Vendor)
                    .outerjoin(Vendor, col(Vendor.id) == Technician.vendor_id)
                    .where(Technician.name == bindparam("tech")))
_RECENT_GRANTS = select(Grant).where(
    Grant.technician_id == bindparam("tech"), Grant.device_id == bindparam("device"),
    or_(col(Grant.state).in_(LIVE_STATES), Grant.end >= bindparam("recent")))


def _access_facts(db: Session, tech_name: str, device_name: str, now: datetime
                  ) -> _AccessFacts:
    """The one read :func:`check_access` decides on: the technician and their vendor, the
    device, whether an invitation still waits for approval, and their grants on it that are
    live or ended within 30 days (the refusal then says why)."""
    tech, vendor = db.exec(_TECH_AND_VENDOR, params={"tech": tech_name}).first() or (None, None)
    device = maybe_named(db, Device, device_name)
    if tech is None or device is None:
        return tech, vendor, device, False, []
    pending = tech.disabled and is_awaiting_approval(db, tech)
    grants = list(db.exec(_RECENT_GRANTS, params={
        "tech": tech.id, "device": device.id, "recent": now - timedelta(days=30)}).all())
    return tech, vendor, device, pending, grants


async def pairs_with_an_open_grant(ctx: Context, pairs: set[tuple[str, str]]
                                   ) -> set[tuple[str, str]]:
    """Which (technician, device) pairs have a grant open now: one query for many sessions
    (the scheduler's fast path when many windows close at once)."""
    if not pairs:
        return set()
    now = ctx.now()
    techs = {tech for tech, _ in pairs}
    async with ctx.store.reading() as db:
        rows = (await db.exec(
            select(Technician.name, Device.name)
            .join(Grant, col(Grant.technician_id) == col(Technician.id))
            .join(Device, col(Device.id) == col(Grant.device_id))
            .where(col(Technician.name).in_(techs), col(Grant.state).in_(LIVE_STATES),
                   col(Grant.revoked_at).is_(None), Grant.start <= now, Grant.end > now))
        ).all()
    return {(tech, device) for tech, device in rows} & pairs


async def grants_of(ctx: Context, tech_name: str) -> list[GrantRow]:
    """A technician's current and upcoming grants (for the no-device SSH menu)."""
    await refresh_states(ctx)
    async with ctx.store.session() as db:
        rows = (await db.exec(select(Grant, Technician, Device).join(Technician).join(Device)
                              .where(Technician.name == tech_name,
                                     col(Grant.state).in_(LIVE_STATES))
                              .order_by(col(Grant.start)))).all()
    return [GrantRow(*row) for row in rows]
