"""What the dashboard and device pages show: activity per day, and each device's history of
grants and sessions (who asked, who approved, how it ended)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import col, or_, select

from broker.domain.activity import DayActivity, daily_activity, days_ending
from broker.errors import NotFound
from broker.services.context import Context
from broker.store.models import (
    AccessRequest,
    Approval,
    Approver,
    Device,
    Grant,
    Session,
    Technician,
)

HISTORY_DAYS = 30


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def grant_end(grant: Grant) -> datetime:
    """When the grant's access really ended (or will end): its revocation, else its end."""
    return _aware(grant.revoked_at) if grant.revoked_at else _aware(grant.end)


async def activity(ctx: Context, days: int = HISTORY_DAYS) -> list[DayActivity]:
    zone = ZoneInfo(ctx.config.settings.broker.timezone)
    today = ctx.now().astimezone(zone).date()
    span = days_ending(today, days)
    since = datetime.combine(span[0], datetime.min.time(), zone).astimezone(UTC)
    async with ctx.store.session() as db:
        starts = (await db.exec(select(Session.started_at).where(
            col(Session.started_at) >= since))).all()
        grants = (await db.exec(select(Grant).where(
            or_(col(Grant.end) >= since, col(Grant.state).in_(("active", "scheduled")))))).all()
    windows = [(_aware(g.start), grant_end(g)) for g in grants]
    return daily_activity(span, zone, (_aware(s) for s in starts), windows)


@dataclass(frozen=True)
class SessionLine:
    id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    state: str


@dataclass(frozen=True)
class GrantLine:
    grant: Grant
    technician: str
    vendor: str
    reason: str | None
    approved_by: list[str]  # approvers who approved; break-glass: who opened it
    ends_at: datetime
    sessions: list[SessionLine] = field(default_factory=list)

    @property
    def how_it_ended(self) -> str:
        g = self.grant
        if g.state == "revoked":
            return f"revoked{': ' + g.revoke_reason if g.revoke_reason else ''}"
        return {"active": "active", "scheduled": "scheduled"}.get(g.state, "expired")


@dataclass(frozen=True)
class DeviceHistory:
    device: Device
    grants: list[GrantLine]  # newest first

    @property
    def current(self) -> GrantLine | None:
        """The grant an auditor asks about first: an open one, else the latest."""
        open_ = [g for g in self.grants if g.grant.state in ("active", "scheduled")]
        chosen = open_ or self.grants
        return chosen[0] if chosen else None


async def device_history(ctx: Context, name: str, days: int = HISTORY_DAYS) -> DeviceHistory:
    since = ctx.now() - timedelta(days=days)
    async with ctx.store.session() as db:
        device = (await db.exec(select(Device).where(Device.name == name))).first()
        if device is None:
            raise NotFound(f"no device {name!r}")
        grants = (await db.exec(select(Grant).where(
            Grant.device_id == device.id,
            or_(col(Grant.end) >= since, col(Grant.state).in_(("active", "scheduled"))))
            .order_by(col(Grant.start).desc()))).all()
        ids = [g.id for g in grants]
        techs = {t.id: t for t in (await db.exec(select(Technician).where(
            col(Technician.id).in_({g.technician_id for g in grants})))).all()}
        requests = {r.id: r for r in (await db.exec(select(AccessRequest).where(
            col(AccessRequest.id).in_({g.request_id for g in grants if g.request_id}))))}
        approvals = (await db.exec(select(Approval, Approver).join(
            Approver, col(Approval.approver_id) == col(Approver.id)).where(
            col(Approval.request_id).in_(list(requests)), Approval.decision == "approve")
            .order_by(col(Approval.created_at)))).all()
        sessions = (await db.exec(select(Session).where(col(Session.grant_id).in_(ids))
                                  .order_by(col(Session.started_at)))).all()
    approved: dict[int, list[str]] = {}
    for approval, approver in approvals:
        approved.setdefault(approval.request_id, []).append(approver.name)
    lines = []
    for g in grants:
        tech = techs.get(g.technician_id)
        request = requests.get(g.request_id) if g.request_id else None
        by = ([f"break-glass by {g.breakglass_by}"] if g.breakglass and g.breakglass_by
              else approved.get(g.request_id or -1, []))
        lines.append(GrantLine(
            grant=g, technician=tech.name if tech else "?", vendor=tech.vendor if tech else "?",
            reason=request.reason if request else g.breakglass_reason, approved_by=by,
            ends_at=grant_end(g),
            sessions=[SessionLine(s.id, _aware(s.started_at),
                                  _aware(s.ended_at) if s.ended_at else None, s.end_reason,
                                  s.state) for s in sessions if s.grant_id == g.id]))
    return DeviceHistory(device, lines)
