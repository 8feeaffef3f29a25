"""Reading the audit log: a page of it newest first (the portal), or in chain order after a
cursor (the API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import ColumnElement
from sqlmodel import col, func, select

from broker.audit import iter_events
from broker.audit.export import as_dict, write_export
from broker.services.context import Context
from broker.store.models import AuditEvent


def _of_kind(kind: str, *, prefix: bool) -> ColumnElement[bool]:
    column = col(AuditEvent.kind)
    return column.startswith(kind, autoescape=True) if prefix else column == kind


async def audit_page(ctx: Context, offset: int, limit: int,
                     kind: str | None) -> tuple[list[AuditEvent], int]:
    """Audit rows newest first, optionally only kinds starting with ``kind``; and how many."""
    query = select(AuditEvent)
    count = select(func.count()).select_from(AuditEvent)
    if kind:
        query = query.where(_of_kind(kind, prefix=True))
        count = count.where(_of_kind(kind, prefix=True))
    async with ctx.store.session() as db:
        total = (await db.exec(count)).one()
        rows = (await db.exec(query.order_by(col(AuditEvent.seq).desc())
                              .offset(offset).limit(limit))).all()
    return list(rows), int(total)


async def audit_after(ctx: Context, after: int, limit: int, *, since: datetime | None = None,
                      kind: str | None = None) -> list[AuditEvent]:
    """Up to ``limit`` rows in chain order after sequence number ``after``; ``kind`` ending
    in '.' is a prefix (``grant.``), otherwise one exact kind."""
    query = select(AuditEvent).where(AuditEvent.seq > after)
    if since is not None:
        query = query.where(AuditEvent.ts >= since)
    if kind is not None:
        query = query.where(_of_kind(kind, prefix=kind.endswith(".")))
    async with ctx.store.session() as db:
        rows = await db.exec(query.order_by(col(AuditEvent.seq)).limit(limit))
        return list(rows.all())


async def export_audit(ctx: Context, out: TextIO, fmt: str, since: datetime | None) -> int:
    """Every row (since a moment) in chain order to ``out`` as jsonl or csv; how many."""
    async with ctx.store.session() as db:
        return await write_export(iter_events(db, since), out, fmt)


async def newest_events(ctx: Context, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` rows, oldest of them first, as ``audit export`` writes them."""
    async with ctx.store.session() as db:
        rows = await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())
                             .limit(count))
        return [as_dict(row) for row in reversed(rows.all())]
