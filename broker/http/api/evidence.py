"""Recordings and the audit log over the API: what auditors read and verify."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from broker.audit import checks
from broker.audit.export import as_dict
from broker.errors import Conflict, NotFound
from broker.http.api.framework import Call, page
from broker.http.api.schemas import (
    AuditList,
    AuditQuery,
    AuditVerify,
    RecordingList,
    RecordingQuery,
    RecordingVerify,
    SessionPath,
)
from broker.http.errors import BadInput
from broker.recording import SIGNATURE_FILE, RecordingError, SessionInfo, iter_sessions
from broker.recording.manifest import signer_for
from broker.recording.retention import read_holds
from broker.recording.verify import verify_session
from broker.services import render
from broker.services.audit_log import audit_after
from broker.services.context import Context
from broker.services.evidence import session_records
from broker.services.requests import Requests


def _grant(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _recordings(root: Path) -> tuple[list[SessionInfo], dict[str, Any]]:
    try:
        return list(iter_sessions(root)), read_holds(root)
    except (RecordingError, ValueError) as exc:
        raise Conflict(f"the recordings directory cannot be read: {exc}") from None


def _summary(info: SessionInfo, holds: dict[str, Any]) -> dict[str, Any]:
    meta = info.metadata
    return {"id": info.session_id, "technician": meta.get("technician"),
            "vendor": meta.get("vendor"), "device": meta.get("device"),
            "grant": _grant(meta.get("grant")), "client": meta.get("client"),
            "started_at": info.started_at, "ended_at": info.ended_at,
            "end_reason": info.end_reason,
            "files": sorted(p.name for p in info.path.iterdir() if p.is_file()),
            "sealed": (info.path / SIGNATURE_FILE).is_file(),
            "hold": info.session_id in holds}


def _matches(info: SessionInfo, q: RecordingQuery) -> bool:
    meta = info.metadata
    return not ((q.technician is not None and meta.get("technician") != q.technician)
                or (q.device is not None and meta.get("device") != q.device)
                or (q.vendor is not None and meta.get("vendor") != q.vendor)
                or (q.grant is not None and _grant(meta.get("grant")) != q.grant)
                or (q.since is not None and info.started_at < q.since)
                or (q.until is not None and info.started_at >= q.until))


async def list_recordings(call: Call[Any, RecordingQuery, Any]) -> RecordingList:
    """Recorded sessions, oldest first; ``after`` is the last id of the previous page."""
    q = call.query

    def collect() -> list[dict[str, Any]]:
        sessions, holds = _recordings(call.ctx.config.recordings_dir)
        return [_summary(s, holds) for s in sessions if _matches(s, q)]

    rows = await asyncio.to_thread(collect)
    if q.after is not None:
        ids = [r["id"] for r in rows]
        if q.after not in ids:
            raise BadInput("after", f"after: no recorded session {q.after!r} in this listing",
                           status=422)
        rows = rows[ids.index(q.after) + 1:]
    items, cursor = page(rows, q.limit, lambda d: d["id"])
    return RecordingList.model_validate({"items": items, "next": cursor})


def _find(ctx: Context, ident: str) -> tuple[SessionInfo, dict[str, Any]]:
    sessions, holds = _recordings(ctx.config.recordings_dir)
    for info in sessions:
        if ident in (info.session_id, info.path.name):
            return info, holds
    raise NotFound(f"no recorded session {ident!r}")


def _verify(ctx: Context, info: SessionInfo) -> list[str]:
    return verify_session(info.path, signer_for(ctx.config).public_key)


async def show_recording(call: Call[SessionPath, Any, Any]) -> dict[str, Any]:
    info, holds = await asyncio.to_thread(_find, call.ctx, call.path.id)
    problems = await asyncio.to_thread(_verify, call.ctx, info)
    records = await session_records(call.ctx, info.session_id, info.metadata.get("grant"))
    request = None
    if records["request"] is not None:
        request = render.request(await Requests(call.ctx, call.caller.actor).show(
            records["request"]["id"]))
    return {**_summary(info, holds), "verified": not problems, "problems": problems,
            "in_database": records["session"] is not None, "request": request}


async def verify_recording(call: Call[SessionPath, Any, Any]) -> RecordingVerify:
    info, _ = await asyncio.to_thread(_find, call.ctx, call.path.id)
    problems = await asyncio.to_thread(_verify, call.ctx, info)
    return RecordingVerify(session=info.session_id, ok=not problems, problems=problems)


async def list_audit(call: Call[Any, AuditQuery, Any]) -> AuditList:
    """Audit rows in chain order; ``kind`` ending in '.' is a prefix (``grant.``)."""
    q = call.query
    rows = await audit_after(call.ctx, q.after or 0, q.limit + 1, since=q.since, kind=q.kind)
    items, cursor = page([as_dict(r) for r in rows], q.limit, lambda d: d["seq"])
    return AuditList.model_validate({"items": items, "next": cursor})


async def verify_audit(call: Call[Any, Any, Any]) -> AuditVerify:
    """The hash chain and its signed checkpoints (``broker audit verify``)."""
    result = await checks.check(call.ctx)
    return AuditVerify.model_validate({"ok": not result.problems, "rows": result.rows,
                                       "problems": [{"seq": getattr(p, "seq", None),
                                                     "message": p.message}
                                                    for p in result.problems]})
