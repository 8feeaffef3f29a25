"""Supervising a live SSH session: a hospital staff member (approver, auditor or admin) watches
the technician's terminal and can pause the technician's input, resume it, or end the session.

Being on the Supervise page is being present: its event stream joins the session's
supervision (:class:`broker.services.supervision.Supervision`) and leaves it when the stream
goes away, after :data:`LEAVE_GRACE` seconds (so that reloading the page, as each button does,
is not a leave). The stream writes at least every second, so a closed page is noticed within
about a second plus the grace. Pause, resume and end are CSRF-protected POSTs.

Supervision acts on the node that holds the session (the live session lives in that process);
the page says which node that is when it is another one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from aiohttp import web

from broker.errors import NotFound
from broker.http.keys import CONTEXT, LIVE_SESSIONS
from broker.http.staff.auth import redirect, requires, signed_in
from broker.http.staff.pages import player_csp
from broker.http.staff.queries import SESSION_ID
from broker.http.staff.render import render
from broker.http.staff.watch import stream_cast
from broker.services.sessions import session_view
from broker.services.supervision import Supervision
from broker.store.models import Session

LEAVE_GRACE = 3.0  # seconds a supervisor's stream may be gone before they count as left
PRESENCE_KEEPALIVE = 1.0  # seconds between writes on a supervisor's stream
ACTIONS = ("pause", "resume", "end")
_leaving: set[asyncio.Task[None]] = set()


class Supervisable(Protocol):
    session_id: str | None
    supervision: Supervision
    technician: str
    device: str

    async def end_by_supervisor(self, who: str) -> None: ...


def _live(request: web.Request, session_id: str) -> Supervisable | None:
    """The session, when it is live in this process."""
    for live in request.app[LIVE_SESSIONS]:
        endpoint = getattr(live, "endpoint", None)  # the protocol side of an AccessSession
        if getattr(live, "session_id", None) == session_id and \
                isinstance(getattr(endpoint, "supervision", None), Supervision):
            return cast(Supervisable, endpoint)
    return None


async def _session(request: web.Request) -> tuple[Session, str, str]:
    session_id = request.match_info["session"]
    row = await session_view(request.app[CONTEXT], session_id) \
        if SESSION_ID.fullmatch(session_id) else None
    if row is None:
        raise NotFound(f"no session {session_id[:40]!r}")
    return row.session, row.technician, row.device


def _who(request: web.Request) -> str:
    return signed_in(request).user.name


@requires("supervise")
async def supervise_list(request: web.Request) -> web.StreamResponse:
    rows = [(live.session_id, live.technician, live.device, live.supervision)
            for live in (_live(request, str(getattr(s, "session_id", None) or ""))
                         for s in request.app[LIVE_SESSIONS]) if live is not None]
    rows.sort(key=lambda row: (row[3].state() != "waiting", str(row[0])))
    return render(request, "supervise_list.html",
                  {"rows": rows, "node": request.app[CONTEXT].node})


@requires("supervise")
async def supervise_page(request: web.Request) -> web.StreamResponse:
    session, technician, device = await _session(request)
    live = _live(request, session.id)
    response = render(request, "supervise.html", {
        "session": session, "technician": technician, "device": device, "live": live,
        "supervision": live.supervision if live else None,
        "node": request.app[CONTEXT].node, "done": request.query.get("done")})
    player_csp(response)
    return response


@requires("supervise")
async def supervise_stream(request: web.Request) -> web.StreamResponse:
    session, _, _ = await _session(request)
    live = _live(request, session.id)
    if live is None or not session.recording or not SESSION_ID.fullmatch(session.recording):
        raise NotFound(f"session {session.id} is not live on this node")
    who = _who(request)
    await live.supervision.join(who)
    try:
        return await stream_cast(request, session, keepalive=PRESENCE_KEEPALIVE)
    finally:
        task = asyncio.ensure_future(_leave_later(live.supervision, who))
        _leaving.add(task)
        task.add_done_callback(_leaving.discard)


async def _leave_later(supervision: Supervision, who: str) -> None:
    await asyncio.sleep(LEAVE_GRACE)
    await supervision.leave(who)


@requires("supervise")
async def supervise_action(request: web.Request) -> web.StreamResponse:
    action = request.match_info["action"]
    session_id = request.match_info["session"]
    if action not in ACTIONS or not SESSION_ID.fullmatch(session_id):
        raise NotFound(f"no such page: {request.path[:80]}")
    live = _live(request, session_id)
    if live is None:
        raise NotFound(f"session {session_id} is not live on this node")
    who = _who(request)
    if action == "end":
        await live.end_by_supervisor(who)
        return redirect("/staff/supervise?ended=" + session_id)
    changed = await (live.supervision.pause(who) if action == "pause"
                     else live.supervision.resume(who))
    outcome = f"{action}d" if changed else f"already-{action}d"
    return redirect(f"/staff/sessions/{session_id}/supervise?done={outcome}")


def setup(app: web.Application) -> None:
    app.router.add_get("/staff/supervise", supervise_list)
    app.router.add_get("/staff/sessions/{session}/supervise", supervise_page)
    app.router.add_get("/staff/sessions/{session}/supervise/stream", supervise_stream)
    app.router.add_post("/staff/sessions/{session}/supervise/{action}", supervise_action)
