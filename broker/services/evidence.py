"""The records behind a recorded session: its row, grant, request, approvals and audit rows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlmodel import col, select

from broker.audit.export import as_dict
from broker.services.context import Context
from broker.store.models import AccessRequest, Approval, Approver, AuditEvent, Grant, Session


def _row(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    return {k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in model.model_dump().items()}


async def session_records(ctx: Context, session_id: str,
                          grant_hint: object = None) -> dict[str, Any]:
    """The session's row, grant, request, approvals (with approver names) and audit rows.

    ``grant_hint`` (the grant named in ``session.json``) is used when the database has no row
    for the session (a recording without its row).
    """
    async with ctx.store.session() as db:
        session = await db.get(Session, session_id)
        grant_id = session.grant_id if session is not None else _int(grant_hint)
        grant = await db.get(Grant, grant_id) if grant_id is not None else None
        request = (await db.get(AccessRequest, grant.request_id)
                   if grant is not None and grant.request_id is not None else None)
        approvals: list[dict[str, Any]] = []
        if request is not None:
            rows = (await db.exec(
                select(Approval, Approver).where(Approval.request_id == request.id,
                                                 Approval.approver_id == Approver.id)
                .order_by(col(Approval.created_at), col(Approval.id)))).all()
            approvals = [{"approver": approver.name, "decision": approval.decision,
                          "comment": approval.comment, "via": approval.via,
                          "at": approval.created_at.isoformat()}
                         for approval, approver in rows]
        subjects = [f"session:{session_id}"]
        if grant is not None:
            subjects.append(f"grant:{grant.id}")
        if request is not None:
            subjects.append(f"request:{request.id}")
        audit = (await db.exec(select(AuditEvent).where(col(AuditEvent.subject).in_(subjects))
                               .order_by(col(AuditEvent.seq)))).all()
    return {"session": _row(session), "grant": _row(grant), "request": _row(request),
            "approvals": approvals, "audit": [as_dict(row) for row in audit]}


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


async def recordings_in_database(ctx: Context) -> tuple[set[str], dict[str, str], set[str]]:
    """For ``broker recordings verify --all``: the recording directories of sessions live on
    some node (a ``live`` row in the sessions table, and no ``session.ended`` or
    ``session.interrupted`` audit row: the table is not signed, the audit log is); every
    recording directory a ``session.started`` audit row names (directory -> where it is
    named); and the sessions ``recording.pruned`` rows say retention deleted."""
    kinds = ["session.started", "session.ended", "session.interrupted", "recording.pruned"]
    async with ctx.store.session() as db:
        live_rows = (await db.exec(select(Session.id, Session.recording).where(
            Session.state == "live", col(Session.recording).is_not(None)))).all()
        events = (await db.exec(select(AuditEvent).where(col(AuditEvent.kind).in_(kinds))
                                .order_by(col(AuditEvent.seq)))).all()
    named: dict[str, str] = {}
    pruned: set[str] = set()
    ended: set[str] = set()
    for row in events:
        data = json.loads(row.data)
        if row.kind == "recording.pruned":
            pruned.update(str(s) for s in data.get("deleted") or [])
        elif row.kind != "session.started":
            ended.add(str(row.subject))
        elif data.get("recording"):
            named[str(data["recording"])] = (f"{row.kind} audit row {row.seq}, {row.subject},"
                                             f" {row.ts.isoformat()}")
    live = {recording for sid, recording in live_rows
            if recording and f"session:{sid}" not in ended}
    return live, named, pruned
