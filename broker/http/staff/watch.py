"""Watching a live session: a read-only terminal fed by Server-Sent Events.

The node holding a session appends to its ``term-N.cast`` as it runs (flushed at least
every half second), so any node sharing the recordings directory can follow it. The stream
sends, in asciinema-player's ``eventsource`` format, one reset (terminal size plus all the
output so far) and then each new output or resize event; ``event: done`` when the session
has ended and its file is drained. Only output reaches the browser: nothing flows back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.errors import NotFound
from broker.http.keys import CONTEXT
from broker.http.staff.auth import requires, signed_in
from broker.http.staff.pages import player_csp
from broker.http.staff.queries import SESSION_ID
from broker.http.staff.render import render
from broker.recording.files import TERMINALS, recorded_files
from broker.services.context import Context
from broker.services.sessions import session_view
from broker.store.models import Session

POLL_SECONDS = 0.2
LIVE_CHECK_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
INIT_LIMIT = 256 * 1024  # characters of earlier output replayed when the viewer joins
READ_LIMIT = 1024 * 1024  # bytes read per poll


class CastTail:
    """Follows the newest ``term-*.cast`` of a session directory as it grows."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        self.offset = 0
        self._partial = b""

    def _newest(self) -> Path | None:
        casts = [cast.path for cast in recorded_files(self.directory, kinds=TERMINALS)]
        return max(casts, key=lambda p: (p.stat().st_mtime, p.name), default=None)

    def poll(self) -> list[dict[str, Any] | list[Any]]:
        """What to send now: a reset when a (new) cast file is picked up, then events."""
        messages: list[dict[str, Any] | list[Any]] = []
        newest = self._newest()
        if newest is not None and newest != self.path:
            self.path, self.offset, self._partial = newest, 0, b""
            reset = self._start()
            if reset is None:
                self.path = None  # the header is not written yet: try again next poll
                return messages
            messages.append(reset)
        if self.path is None:
            return messages
        for event in self._events():
            if event[1] in ("o", "r"):
                messages.append([event[0], event[1], event[2]])
        return messages

    def _start(self) -> dict[str, Any] | None:
        lines = self._read_lines()
        if not lines:
            return None
        try:
            header = json.loads(lines[0])
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        output: list[str] = []
        last = 0.0
        for line in lines[1:]:
            event = _event(line)
            if event is None:
                continue
            last = event[0]
            if event[1] == "o":
                output.append(event[2])
            elif event[1] == "r":
                output.clear()  # a resize redraws; keep what follows it
        init = "".join(output)[-INIT_LIMIT:]
        return {"cols": header.get("width", 80), "rows": header.get("height", 24),
                "time": last, "init": init}

    def _events(self) -> list[tuple[float, str, str]]:
        return [e for e in (_event(line) for line in self._read_lines()) if e is not None]

    def _read_lines(self) -> list[bytes]:
        assert self.path is not None
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(READ_LIMIT)
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line for line in lines if line.strip()]


def _event(line: bytes) -> tuple[float, str, str] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], int | float) \
            and isinstance(value[1], str) and isinstance(value[2], str):
        return float(value[0]), value[1], value[2]
    return None


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


async def _session(request: web.Request) -> tuple[Session, str, str]:
    session_id = request.match_info["session"]
    row = await session_view(_ctx(request), session_id) if SESSION_ID.fullmatch(session_id) \
        else None
    if row is None:
        raise NotFound(f"no session {session_id[:40]!r}")
    return row.session, row.technician, row.device


@requires("watch")
async def watch_page(request: web.Request) -> web.StreamResponse:
    session, technician, device = await _session(request)
    response = render(request, "watch.html", {"session": session, "technician": technician,
                                              "device": device})
    player_csp(response)
    return response


@requires("watch")
async def watch_stream(request: web.Request) -> web.StreamResponse:
    session, _, _ = await _session(request)
    ctx = _ctx(request)
    if not session.recording or not SESSION_ID.fullmatch(session.recording):
        raise NotFound(f"session {session.id} has no recording to watch")
    await ctx.audit_alone("session.watched", signed_in(request).actor, f"session:{session.id}")
    return await stream_cast(request, session)


async def stream_cast(request: web.Request, session: Session,
                      keepalive: float = KEEPALIVE_SECONDS) -> web.StreamResponse:
    """The session's terminal as Server-Sent Events until it ends or the viewer goes away
    (noticed at the next write: ``keepalive`` bounds how long that takes)."""
    ctx = _ctx(request)
    assert session.recording is not None
    tail = CastTail(ctx.config.recordings_dir / session.recording)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    live, checked, quiet_since = session.state == "live", time.monotonic(), time.monotonic()
    with contextlib.suppress(ConnectionError):  # the viewer went away
        while True:
            messages = await asyncio.to_thread(tail.poll)
            for message in messages:
                await response.write(f"data: {json.dumps(message)}\n\n".encode())
            now = time.monotonic()
            if messages:
                quiet_since = now
            elif now - quiet_since >= keepalive:
                await response.write(b": keep-alive\n\n")
                quiet_since = now
            if not messages and not live:
                await response.write(b"event: done\ndata: {}\n\n")
                break
            if live and now - checked >= LIVE_CHECK_SECONDS:
                current = await session_view(ctx, session.id)
                live, checked = current is not None and current.session.state == "live", now
                continue  # drain what the session wrote before it ended
            await asyncio.sleep(POLL_SECONDS)
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/staff/sessions/{session}/watch", watch_page)
    app.router.add_get("/staff/sessions/{session}/stream", watch_stream)
