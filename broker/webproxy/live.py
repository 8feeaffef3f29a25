"""One signed-in browser's proxied session on this node: recorded, registered with the live
sessions (so expiry, revoke and kill reach it), and cut at once when its grant ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from broker.domain.protocols import Protocol
from broker.errors import BrokerError, DeviceError, RecordingUnavailable, SessionRefused
from broker.recording.files import Kind
from broker.recording.har import HAR_FILE, HarWriter, WebSocketLog
from broker.revocation.registry import LiveSessions
from broker.services.access_session import WINDOW_CLOSED, AccessSession
from broker.services.context import Context
from broker.services.device_web import WebTarget, load_target
from broker.services.sessions import (
    audit_event,
    device_login,
)
from broker.services.web_signin import end_web_session
from broker.store.models import Device, Grant, Technician, WebSession
from broker.webproxy import har_entries
from broker.webproxy.upstream import form_login, open_client

log = structlog.get_logger("broker.webproxy")
WS_POLICY_VIOLATION = 1008
RELAY_GRACE = 0.5  # seconds
SHUTTING_DOWN = "the broker is shutting down"  # what broker.server says at a stop
# what broker.server says when a drain ends: the sign-in goes on on another node
DRAINED = ("this broker node drained for maintenance; reconnect to continue on another node")
KEEP_SIGNIN = frozenset({SHUTTING_DOWN, DRAINED})


class ProxiedSession:
    """A browser's proxied session: the web side of an :class:`AccessSession` (its endpoint),
    bound to the grant the sign-in was for."""

    def __init__(self, ctx: Context, registry: LiveSessions, row: WebSession,
                 tech: Technician, device: Device, grant: Grant, target: WebTarget,
                 client: str) -> None:
        self.ctx, self.row = ctx, row
        self.tech, self.device_row, self.grant, self.target = tech, device, grant, target
        self.client_addr = client
        self.prefix = f"/w/{grant.id}/"
        self.session = AccessSession(ctx, registry, self, technician=tech.name,
                                     device=device.name, client=client, protocol="web",
                                     bound_grant=grant.id)
        self.session.protocols.add(Protocol.WEB)
        self.session.ends_at = grant.end
        self.har: HarWriter | None = None
        self.http: aiohttp.ClientSession | None = None
        self.sockets: set[web.WebSocketResponse] = set()
        self.relays: set[asyncio.Future[None]] = set()  # WebSocket relays still recording
        self._logged_in = False
        self._login_lock = asyncio.Lock()
        self.requests = 0

    @property
    def technician(self) -> str:
        return self.tech.name

    @property
    def device(self) -> str:
        return self.device_row.name

    @property
    def session_id(self) -> str | None:
        return self.session.session_id

    @property
    def ends_at(self) -> datetime:
        return self.session.ends_at

    @property
    def closing(self) -> str | None:
        return self.session.closing

    def refusal(self) -> str | None:
        """Why this session may not serve a request right now (checked per request, so an
        expiry is honoured even before the scheduler gets to it)."""
        return self.session.refusal()

    async def terminate(self, reason: str) -> None:
        await self.session.terminate(reason)

    # -- the session's endpoint (broker.services.access_session.Endpoint) --------------------
    async def notice(self, text: str) -> None:
        """A browser has no channel for an out-of-band notice; the page's own requests are
        answered with the window-closed page once the window closes."""

    async def cut(self, reason: str) -> None:
        await asyncio.gather(*(ws.close(code=WS_POLICY_VIOLATION,
                                        message=_close_message(reason))
                               for ws in list(self.sockets)), return_exceptions=True)
        if self.relays:  # let them write their HAR entries, briefly
            await asyncio.wait(list(self.relays), timeout=RELAY_GRACE)
        if self.http is not None:
            await self.http.close()
        if self.har is not None:
            with contextlib.suppress(OSError):  # reported by the flusher; the seal goes on
                self.har.close()
        await self.session.close(reason)
        if reason not in KEEP_SIGNIN:  # the sign-in outlives a restart; the grant decides
            try:
                await end_web_session(self.ctx, self.row.id, reason)
            except BrokerError as exc:
                log.error("ending the web sign-in failed", session=self.session_id,
                          error=str(exc))

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the session row and its recording, and register with the live sessions.
        Raises :class:`SessionRefused` while this node opens no new session."""
        access = await self.session.check(Protocol.WEB)
        if not access.allowed or access.grant is None or access.grant.id != self.grant.id:
            raise SessionRefused(WINDOW_CLOSED, "window-closed")
        recording = await self.session.open(access, "web", {
            "protocol": "web", "web_session": self.row.id,
            "web_url": self.target.origin.origin + self.target.origin.base_path})
        self.har = HarWriter(recording.file_for(Kind.WEB),
                             body_limit=self.ctx.config.settings.recording.har_body_limit,
                             comment=f"{self.tech.name}@{self.device_row.name}, grant "
                                     f"{self.grant.id}, web session {self.row.id}")
        assert self.har.path.name == HAR_FILE
        await audit_event(self.ctx, "web.session_started", f"technician:{self.tech.name}",
                          f"web:{self.row.id}", session_id=self.session_id,
                          grant=self.grant.id,
                          device=self.device_row.name, client=self.client_addr)

    async def client(self) -> aiohttp.ClientSession:
        """The HTTP client towards the device, logged in there (once) if the device wants it."""
        if self.http is not None and self._logged_in:
            return self.http
        async with self._login_lock:
            if self.http is None:
                self.target = await load_target(self.ctx, self.target.device_id)
                login = (await device_login(self.ctx, self.target.device_id)
                         if self.target.settings.auth != "none" else None)
                self.http = open_client(self.target, login)
                if self.target.settings.auth == "form":
                    assert login is not None
                    try:
                        await form_login(self.http, self.target, login, self._record_login)
                    except DeviceError as exc:
                        await self.audit("web.device_login_failed", error=str(exc))
                        await self.http.close()
                        self.http = None
                        raise
                    await self.audit("web.device_login", method="form")
            self._logged_in = True
            return self.http

    async def _record_login(self, method: str, url: URL, headers: dict[str, str],
                            form: dict[str, str], response: aiohttp.ClientResponse,
                            body: bytes) -> None:
        if self.har is None:
            return
        capture = self.har.body()
        with contextlib.suppress(RecordingUnavailable):  # reported; the entry says it was lost
            capture.feed(body)
        self.har.add(har_entries.login_entry(self.ctx.now(), method, url, headers, form,
                                             response, capture.finish()))

    def websocket_log(self) -> WebSocketLog:
        recording = self.session.recording
        assert self.har is not None and recording is not None
        return self.har.websocket(recording.file_for(Kind.WEBSOCKET, self.requests))

    async def audit(self, kind: str, **data: Any) -> None:
        await audit_event(self.ctx, kind, f"technician:{self.tech.name}",
                          f"web:{self.row.id}", device=self.device_row.name,
                          grant=self.grant.id, **data)


def unavailable(line: str) -> web.HTTPServiceUnavailable:
    """503 with the broker's one line and a retry hint (draining, recordings not writable)."""
    return web.HTTPServiceUnavailable(text=f"broker: {line}", headers={"Retry-After": "10"})


def closed_text(device: str, reason: str) -> str:
    """What a browser reads once its session is closed."""
    if reason == WINDOW_CLOSED:
        return f"Your access window for {device} has closed; this page no longer works."
    return (f"Your access window for {device} was closed early"
            f" ({reason.removeprefix('access ended: ')}); this page no longer works.")


def _close_message(reason: str) -> bytes:
    return reason.encode("utf-8")[:120]  # a close frame's reason must fit in 123 bytes


def monotonic_ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 3)


async def quietly_close(*closables: Any) -> None:
    for thing in closables:
        with contextlib.suppress(Exception):
            await thing.close()
