"""Devices and live sessions over the API."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from broker.cli import _render as render
from broker.http.api.framework import Call, page
from broker.http.api.schemas import (
    DeviceList,
    KillIn,
    NamePage,
    NamePath,
    SessionList,
    SessionPage,
    SessionPath,
)
from broker.http.errors import BadInput
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.sessions import kill_session, live_sessions
from broker.store.models import Device, Session, Technician


async def list_devices(call: Call[Any, NamePage, Any]) -> DeviceList:
    q = call.query
    devices = await Directory(call.ctx, call.caller.actor).devices()
    rows = [render.device(d) for d in devices if q.after is None or d.name > q.after]
    items, cursor = page(rows, q.limit, lambda d: d["name"])
    return DeviceList.model_validate({"items": items, "next": cursor})


async def show_device(call: Call[NamePath, Any, Any]) -> dict[str, Any]:
    return render.device(await Directory(call.ctx, call.caller.actor).device(call.path.name))


async def _session_dicts(ctx: Context, rows: list[Session]) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        techs = dict((await db.exec(select(Technician.id, Technician.name).where(
            col(Technician.id).in_({r.technician_id for r in rows})))).all())
        devices = dict((await db.exec(select(Device.id, Device.name).where(
            col(Device.id).in_({r.device_id for r in rows})))).all())
    return [{"id": r.id, "state": r.state, "grant": r.grant_id,
             "technician": techs.get(r.technician_id, "?"),
             "device": devices.get(r.device_id, "?"), "node": r.node, "client": r.client_addr,
             "recording": r.recording, "started_at": r.started_at, "kill_reason": r.kill_reason}
            for r in rows]


async def list_sessions(call: Call[Any, SessionPage, Any]) -> SessionList:
    """Live sessions on every node, newest first; ``after`` is the last id of a page."""
    q = call.query
    rows = await live_sessions(call.ctx)
    if q.after is not None:
        ids = [r.id for r in rows]
        if q.after not in ids:
            raise BadInput("after", f"after: no live session {q.after!r} (it may have ended);"
                           " list again from the start", status=422)
        rows = rows[ids.index(q.after) + 1:]
    items, cursor = page(await _session_dicts(call.ctx, rows), q.limit, lambda d: d["id"])
    return SessionList.model_validate({"items": items, "next": cursor})


async def kill(call: Call[SessionPath, Any, KillIn]) -> dict[str, Any]:
    reason = (call.body.reason if call.body is not None else None) or (
        f"ended through the API by {call.caller.name}")
    row = await kill_session(call.ctx, call.path.id, call.caller.actor, reason)
    return (await _session_dicts(call.ctx, [row]))[0]
