"""The staff pages: dashboard, requests, grants, break-glass, live sessions, recordings and
the player, the audit log, devices. Each route names the permission it needs."""

from __future__ import annotations

import asyncio
from itertools import islice
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from broker.domain.durations import DurationError, parse_duration
from broker.errors import NotFound, Refused
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT
from broker.http.staff.auth import redirect, refused, requires, signed_in
from broker.http.staff.insight import chart_for_dashboard
from broker.http.staff.queries import (
    SESSION_ID,
    chain_state,
    recorded_session,
    recorded_sessions,
)
from broker.http.staff.render import PAGE_SIZE, number_or_one, page_links, paginate, render
from broker.recording.files import TERMINALS, recorded_files
from broker.recording.manifest import SIGNATURE_FILE, signer_for
from broker.recording.reader import RecordingError, SessionInfo
from broker.recording.search import format_offset, search
from broker.recording.verify import verify_session
from broker.services import breakglass
from broker.services.audit_log import audit_page
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.grants import Grants
from broker.services.requests import Requests
from broker.services.sessions import kill_session, live_session_views
from broker.services.staff_accounts import may

REQUEST_STATES = ("pending", "approved", "denied", "expired", "cancelled")
GRANT_FILTERS = ("all", "active", "unreviewed")
MAX_TEXT = 2000
MAX_HITS = 500
NOTICES = {
    "approved": "You approved request {id}.", "denied": "You denied request {id}.",
    "revoked": "Grant {id} was revoked: its live sessions are being cut.",
    "reviewed": "Your review of break-glass grant {id} is recorded.",
    "breakglass": "Break-glass grant {id} is open now; every approver is notified.",
}
FILE_NAME = SESSION_ID


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


def _notice(request: web.Request) -> str | None:
    template = NOTICES.get(request.query.get("done", ""))
    ident = request.query.get("id", "")
    if template is None or not ident.isdigit():
        return None
    return template.format(id=int(ident))


def _ident(request: web.Request, name: str = "id") -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 9:
        raise BadInput(name, f"{name}: expected a number, got {text[:40]!r}", status=404)
    return int(text)


def _text(form: MultiDictProxy[Any], name: str,
          required: bool = False) -> str:
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise BadInput(name, f"{name}: is required")
    if len(text) > MAX_TEXT:
        raise BadInput(name, f"{name}: at most {MAX_TEXT} characters")
    return text


def _free(form: MultiDictProxy[Any], name: str) -> str:
    """A free-text field as typed: the service applies the text rule (and its limit) and
    answers with a message naming the field."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _approver_of(request: web.Request) -> str:
    user = signed_in(request).user
    if not user.approver_name:
        await refused(request, f"staff:{user.name}", 403, "no approver linked")
        raise Refused(f"staff account {user.name} is not linked to an approver: "
                      "ask an admin to add it with --approver NAME")
    return user.approver_name


# -- dashboard --------------------------------------------------------------------------


@requires("dashboard")
async def dashboard(request: web.Request) -> web.StreamResponse:
    ctx, who = _ctx(request), signed_in(request)
    role = who.user.role
    counts: dict[str, int] = {}
    if may(role, "requests"):
        counts["pending"] = len(await Requests(ctx, who.actor).find("pending"))
    if may(role, "grants"):
        counts["active"] = len(await Grants(ctx, who.actor).find(active_only=True))
        counts["unreviewed"] = len(await breakglass.unreviewed(ctx))
    if may(role, "sessions"):
        counts["live"] = len(await live_session_views(ctx))
    chart = await chart_for_dashboard(request) if may(role, "grants") else {}
    return render(request, "dashboard.html", {"counts": counts, **chart})


# -- requests ---------------------------------------------------------------------------


@requires("requests")
async def requests_page(request: web.Request) -> web.StreamResponse:
    state = request.query.get("state", "pending")
    if state not in (*REQUEST_STATES, "all"):
        raise BadInput("state", f"state: expected one of {', '.join(REQUEST_STATES)} or all, "
                                f"got {state[:40]!r}")
    ctx, who = _ctx(request), signed_in(request)
    views = await Requests(ctx, who.actor).find(None if state == "all" else state)
    views.reverse()
    return render(request, "requests.html", {
        "page": paginate(request, views), "state": state, "states": REQUEST_STATES,
        "notice": _notice(request),
        "approver": who.user.approver_name})


@requires("decide")
async def decide(request: web.Request) -> web.StreamResponse:
    ident = _ident(request)
    form = await request.post()
    decision = _text(form, "decision", required=True)
    if decision not in ("approve", "deny"):
        raise BadInput("decision", f"decision: expected approve or deny, got {decision[:40]!r}")
    approver = await _approver_of(request)
    await Requests(_ctx(request), signed_in(request).actor).decide(
        ident, approver, decision == "approve", _free(form, "comment") or None, via="web")
    done = "approved" if decision == "approve" else "denied"
    return redirect(f"/staff/requests?done={done}&id={ident}")


# -- grants and break-glass -------------------------------------------------------------


@requires("grants")
async def grants_page(request: web.Request) -> web.StreamResponse:
    show = request.query.get("filter", "all")
    if show not in GRANT_FILTERS:
        raise BadInput("filter", f"filter: expected one of {', '.join(GRANT_FILTERS)}, "
                                 f"got {show[:40]!r}")
    ctx, who = _ctx(request), signed_in(request)
    rows = await Grants(ctx, who.actor).find(active_only=show == "active",
                                              unreviewed=show == "unreviewed")
    rows.reverse()
    return render(request, "grants.html", {
        "page": paginate(request, rows), "filter": show, "filters": GRANT_FILTERS,
        "notice": _notice(request), "now": ctx.now()})


@requires("revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    ident = _ident(request)
    form = await request.post()
    who = signed_in(request)
    typed = _free(form, "reason")
    reason = typed if typed.strip() else f"revoked from the web UI by {who.user.name}"
    await Grants(_ctx(request), who.actor).revoke(ident, reason)
    return redirect(f"/staff/grants?done=revoked&id={ident}")


@requires("review")
async def breakglass_page(request: web.Request) -> web.StreamResponse:
    rows = await breakglass.unreviewed(_ctx(request))
    return render(request, "breakglass.html", {
        "page": paginate(request, rows), "notice": _notice(request),
        "approver": signed_in(request).user.approver_name})


@requires("review")
async def review(request: web.Request) -> web.StreamResponse:
    ident = _ident(request)
    form = await request.post()
    comment = _free(form, "comment")
    await breakglass.review(_ctx(request), ident, await _approver_of(request), comment)
    return redirect(f"/staff/breakglass?done=reviewed&id={ident}")


@requires("breakglass")
async def open_breakglass(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    tech, device = _text(form, "technician", True), _text(form, "device", True)
    try:
        length = parse_duration(_text(form, "duration", True))
    except DurationError as exc:
        raise BadInput("duration", f"duration: {exc}") from None
    grant = await breakglass.open_breakglass(_ctx(request), tech, device, length,
                                             _free(form, "reason"),
                                             signed_in(request).actor)
    return redirect(f"/staff/breakglass?done=breakglass&id={grant.id}")


# -- live sessions ----------------------------------------------------------------------


@requires("sessions")
async def sessions_page(request: web.Request) -> web.StreamResponse:
    rows = await live_session_views(_ctx(request))
    return render(request, "sessions.html", {"page": paginate(request, rows),
                                             "killed": request.query.get("killed")})


@requires("kill")
async def kill(request: web.Request) -> web.StreamResponse:
    session_id = request.match_info["session"]
    if not SESSION_ID.fullmatch(session_id):
        raise NotFound(f"no session {session_id[:40]!r}")
    form = await request.post()
    why = _free(form, "reason")
    reason = "hospital security ended this session" + (f": {why}" if why.strip() else "")
    await kill_session(_ctx(request), session_id, signed_in(request).actor, reason)
    return redirect(f"/staff/sessions?killed={session_id}")


# -- recordings -------------------------------------------------------------------------


def _root(request: web.Request) -> Path:
    return _ctx(request).config.recordings_dir


@requires("recordings")
async def recordings_page(request: web.Request) -> web.StreamResponse:
    root = _root(request)
    text = request.query.get("q", "").strip()
    tech, device = request.query.get("tech", "").strip(), request.query.get("device", "").strip()
    if len(text) > 200:
        raise BadInput("q", "q: at most 200 characters")
    try:
        if text:
            hits = await asyncio.to_thread(lambda: list(islice(search(root, text), MAX_HITS)))
            return render(request, "recordings.html", {
                "q": text, "tech": tech, "device": device, "hits": paginate(request, hits),
                "capped": len(hits) >= MAX_HITS, "offset": format_offset, "page": None})
        sessions = await asyncio.to_thread(recorded_sessions, root)
    except RecordingError as exc:
        raise Refused(str(exc)) from None
    sessions = [s for s in sessions
                if (not tech or s.metadata.get("technician") == tech)
                and (not device or s.metadata.get("device") == device)]
    return render(request, "recordings.html", {
        "q": "", "tech": tech, "device": device, "hits": None,
        "page": paginate(request, sessions), "sealed": SIGNATURE_FILE})


def _find_recording(request: web.Request) -> SessionInfo:
    session_id = request.match_info["session"]
    try:
        info = recorded_session(_root(request), session_id)
    except RecordingError as exc:
        raise Refused(str(exc)) from None
    if info is None:
        raise NotFound(f"no recorded session {session_id[:40]!r}")
    return info


@requires("recordings")
async def player_page(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    info = _find_recording(request)
    start = request.query.get("t", "")
    try:
        start_at = max(0.0, float(start)) if start else 0.0
    except ValueError:
        raise BadInput("t", f"t: expected a number of seconds, got {start[:40]!r}") from None
    if info.ended_at is None:
        verdict, problems = "live", []
    elif not (info.path / SIGNATURE_FILE).exists():
        verdict, problems = "unsealed", ["not sealed"]
    else:
        key = signer_for(ctx.config).public_key
        problems = await asyncio.to_thread(verify_session, info.path, key)
        verdict = "bad" if problems else "ok"
    files = sorted(p.name for p in info.path.iterdir() if p.is_file()
                   and not p.name.startswith("."))
    wanted = request.query.get("file")
    casts = [cast.name for cast in recorded_files(info.path, kinds=TERMINALS)
             if not wanted or cast.name == wanted]
    await ctx.audit_alone("recording.viewed", signed_in(request).actor,
                          f"session:{info.session_id}")
    response = render(request, "player.html", {
        "info": info, "meta": info.metadata, "verdict": verdict, "problems": problems,
        "files": files, "casts": casts, "start_at": start_at})
    player_csp(response)
    return response


def player_csp(response: web.StreamResponse) -> None:
    """asciinema-player runs its terminal emulator as WebAssembly: allow compiling it (and
    nothing else: no eval, no inline script)."""
    from broker.http.security import CSP

    response.headers["Content-Security-Policy"] = CSP.replace(
        "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")


@requires("recordings")
async def recording_file(request: web.Request) -> web.StreamResponse:
    path = _find_recording(request).path
    name = request.match_info["name"]
    file = path / name
    if not FILE_NAME.fullmatch(name) or name.startswith(".") or file.is_symlink() \
            or not file.is_file():
        raise NotFound(f"no file {name[:60]!r} in this recording")
    return web.FileResponse(file, headers={
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": f'inline; filename="{name}"'})


# -- audit log and devices --------------------------------------------------------------


@requires("audit")
async def audit_log(request: web.Request) -> web.StreamResponse:
    ctx = _ctx(request)
    kind = request.query.get("kind", "").strip()[:60]
    page = number_or_one(request)
    rows, total = await audit_page(ctx, (page - 1) * PAGE_SIZE, PAGE_SIZE, kind or None)
    pages, prev_url, next_url = page_links(request, page, total)
    return render(request, "audit.html", {
        "rows": rows, "kind": kind, "number": page, "pages": pages, "total": total,
        "prev_url": prev_url, "next_url": next_url, "state": await chain_state(ctx)})


@requires("devices")
async def devices_page(request: web.Request) -> web.StreamResponse:
    ctx, who = _ctx(request), signed_in(request)
    state = request.query.get("state", "")
    if state not in ("", "active", "maintenance", "retired"):
        raise BadInput("state", f"state: expected active, maintenance or retired, got "
                                f"{state[:40]!r}")
    devices = [d for d in await Directory(ctx, who.actor).devices()
               if not state or d.state == state]
    return render(request, "devices.html", {"page": paginate(request, devices),
                                            "state": state})


def setup(app: web.Application) -> None:
    add = app.router
    add.add_get("/staff", to_home)
    add.add_get("/staff/", dashboard)
    add.add_get("/staff/requests", requests_page)
    add.add_post("/staff/requests/{id}/decide", decide)
    add.add_get("/staff/grants", grants_page)
    add.add_post("/staff/grants/{id}/revoke", revoke)
    add.add_get("/staff/breakglass", breakglass_page)
    add.add_post("/staff/breakglass", open_breakglass)
    add.add_post("/staff/grants/{id}/review", review)
    add.add_get("/staff/sessions", sessions_page)
    add.add_post("/staff/sessions/{session}/kill", kill)
    add.add_get("/staff/recordings", recordings_page)
    add.add_get("/staff/recordings/{session}", player_page)
    add.add_get("/staff/recordings/{session}/files/{name}", recording_file)
    add.add_get("/staff/audit", audit_log)
    add.add_get("/staff/devices", devices_page)


async def to_home(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/staff/")
