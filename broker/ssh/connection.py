"""One technician's SSH connection: authentication, the grant behind it, and its end.

asyncssh calls the small protocol callbacks below; everything that needs the store goes
through services. A connection is one recorded session, however many channels it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from datetime import datetime

import asyncssh
import structlog

from broker.domain.grants import AccessDecision, Refusal
from broker.domain.protocols import Protocol
from broker.domain.usernames import Target, UsernameError, parse_username
from broker.recording import SessionRecording
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.grants import Access, check_access
from broker.services.sessions import audit_event, close_session, technician_keys

log = structlog.get_logger("broker.ssh")


class ConnectionServices:
    """What every connection shares: the context, the live-session registry, hooks."""

    def __init__(self, ctx: Context, sessions: LiveSessions, public_host: str,
                 public_port: int, on_session_change: object = None) -> None:
        self.ctx, self.sessions = ctx, sessions
        self.public_host, self.public_port = public_host, public_port
        self.on_session_change = on_session_change


class BrokerConnection(asyncssh.SSHServer):
    def __init__(self, services: ConnectionServices) -> None:
        self.services = services
        self.ctx = services.ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "unknown"
        self.username = ""
        self.target: Target | None = None
        self.authenticated = False
        self.upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self.recording: SessionRecording | None = None
        self.session_id: str | None = None
        self.grant_id = 0
        self.ends_at: datetime | None = None
        self.channels: set[object] = set()
        self.closing: str | None = None
        self._protocols_used: set[Protocol] = set()
        self._channel_count = 0

    def next_channel_number(self) -> int:
        self._channel_count += 1
        return self._channel_count - 1

    # -- asyncssh callbacks ----------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername") or ("unknown", 0)
        self.peer = f"{peer[0]}:{peer[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated and self.username:
            _background(audit_event(
                self.ctx, "login.failed", f"ssh:{self.peer}", _shown(self.username),
                client=self.peer))
        _background(self._finish("connection closed" if exc is None
                                           else f"connection lost: {exc}"))

    async def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        self.username = username
        try:
            self.target = parse_username(username)
        except UsernameError as exc:
            self.conn.send_auth_banner(f"broker: {exc}\r\n")
            return True  # still demand auth, which cannot succeed: fail closed
        keys = await technician_keys(self.ctx, self.target.technician)
        if keys:
            self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(keys)))
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    async def auth_completed(self) -> None:
        self.authenticated = True
        assert self.target is not None
        await audit_event(self.ctx, "login.succeeded", f"technician:{self.target.technician}",
                          self.target.device, client=self.peer, method="publickey")

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        _background(self._refused_channel("forward", f"{dest_host}:{dest_port}"))
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "broker: port forwarding is not allowed here")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        _background(self._refused_channel("remote-forward", f"{listen_host}:{listen_port}"))
        return False

    # -- access ----------------------------------------------------------------------------
    async def access(self, protocol: Protocol) -> Access:
        assert self.target is not None and self.target.device is not None
        result = await check_access(self.ctx, self.target.technician, self.target.device,
                                    protocol)
        if result.allowed:
            self._protocols_used.add(protocol)
        return result

    async def still_allowed(self) -> str | None:
        """None while every protocol this session uses is still granted, else why not."""
        if self.target is None or self.target.device is None:
            return None
        for protocol in self._protocols_used or {Protocol.SSH}:
            result = await check_access(self.ctx, self.target.technician, self.target.device,
                                        protocol)
            if not result.allowed:
                return _closing_text(result.decision)
            if result.grant is not None:
                self.ends_at = result.grant.end
        return None

    async def upstream_connection(self) -> asyncssh.SSHClientConnection:
        from broker.ssh.upstream import connect_device

        async with self._upstream_lock:
            if self.upstream is None:
                assert self.device_id is not None
                self.upstream = await connect_device(self.ctx, self.device_id)
            return self.upstream

    device_id: int | None = None

    # -- the live session ------------------------------------------------------------------
    @property
    def technician(self) -> str:
        return self.target.technician if self.target else ""

    @property
    def device(self) -> str:
        return (self.target.device or "") if self.target else ""

    async def warn(self, text: str) -> None:
        for channel in list(self.channels):
            with contextlib.suppress(Exception):
                await channel.notice(text)  # type: ignore[attr-defined]

    async def terminate(self, reason: str) -> None:
        """Close every channel with a one-line notice, then the connection."""
        if self.closing is not None:
            return
        self.closing = reason
        await asyncio.gather(*(channel.close_with(reason)  # type: ignore[attr-defined]
                               for channel in list(self.channels)), return_exceptions=True)
        if self.conn is not None:
            self.conn.close()
        if self.upstream is not None:
            self.upstream.close()

    async def _finish(self, reason: str) -> None:
        self.services.sessions.remove(self)  # type: ignore[arg-type]
        if self.upstream is not None:
            self.upstream.close()
        if self.recording is not None:
            await self.recording.close(self.closing or reason)
        if self.session_id is not None:
            await close_session(self.ctx, self.session_id, self.closing or reason)

    async def _refused_channel(self, kind: str, where: str) -> None:
        await audit_event(self.ctx, "channel.refused", f"technician:{self.technician}",
                          self.device or None, channel=kind, destination=where, client=self.peer)


_tasks: set[asyncio.Future[object]] = set()


def _background(work: Coroutine[object, object, object]) -> None:
    """Run ``work`` from a synchronous asyncssh callback, keeping a reference until done."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _closing_text(decision: AccessDecision) -> str:
    if decision.refusal in (Refusal.EXPIRED, None):
        return "your access window closed"
    return f"access ended: {decision.detail}"


def _shown(username: str) -> str:
    return username[:64].encode("ascii", "backslashreplace").decode("ascii")
