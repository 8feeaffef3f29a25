"""Devices and live sessions over the API."""

from __future__ import annotations

from typing import Any

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
from broker.services import render
from broker.services.directory import Directory
from broker.services.sessions import (
    LiveSessionView,
    kill_session,
    live_session_views,
    session_view,
)


async def list_devices(call: Call[Any, NamePage, Any]) -> DeviceList:
    q = call.query
    devices = await Directory(call.ctx, call.caller.actor).devices()
    rows = [render.device(d) for d in devices if q.after is None or d.name > q.after]
    items, cursor = page(rows, q.limit, lambda d: d["name"])
    return DeviceList.model_validate({"items": items, "next": cursor})


async def show_device(call: Call[NamePath, Any, Any]) -> dict[str, Any]:
    return render.device(await Directory(call.ctx, call.caller.actor).device(call.path.name))


def _session_dict(view: LiveSessionView) -> dict[str, Any]:
    r = view.session
    return {"id": r.id, "state": r.state, "grant": r.grant_id, "technician": view.technician,
            "device": view.device, "node": r.node, "client": r.client_addr,
            "recording": r.recording, "started_at": r.started_at, "kill_reason": r.kill_reason}


async def list_sessions(call: Call[Any, SessionPage, Any]) -> SessionList:
    """Live sessions on every node, newest first; ``after`` is the last id of a page."""
    q = call.query
    rows = await live_session_views(call.ctx)
    if q.after is not None:
        ids = [r.session.id for r in rows]
        if q.after not in ids:
            raise BadInput("after", f"after: no live session {q.after!r} (it may have ended);"
                           " list again from the start", status=422)
        rows = rows[ids.index(q.after) + 1:]
    items, cursor = page([_session_dict(r) for r in rows], q.limit, lambda d: d["id"])
    return SessionList.model_validate({"items": items, "next": cursor})


async def kill(call: Call[SessionPath, Any, KillIn]) -> dict[str, Any]:
    reason = (call.body.reason if call.body is not None else None) or (
        f"ended through the API by {call.caller.name}")
    await kill_session(call.ctx, call.path.id, call.caller.actor, reason)
    view = await session_view(call.ctx, call.path.id)
    assert view is not None  # kill_session found it a moment ago, and sessions are never deleted
    return _session_dict(view)
