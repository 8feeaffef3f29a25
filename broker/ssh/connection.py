"""One technician's SSH connection: authentication, the grant behind it, port forwards,
and its end. asyncssh calls the small protocol callbacks below; everything that needs the
store goes through services. A connection is one recorded session, however many channels
it opens."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any, NoReturn
from typing import Protocol as TypingProtocol

import asyncssh
import structlog
from asyncssh.stream import SSHTCPStreamSession
from sqlalchemy.exc import SQLAlchemyError

from broker import metrics
from broker.domain.grants import AccessDecision, Refusal
from broker.domain.protocols import Protocol
from broker.domain.usernames import Target, UsernameError, parse_username
from broker.errors import BrokerError, DeviceError, SessionRefused, StoreError
from broker.recording import SessionRecording, signer_for
from broker.recording.forward import ForwardLog
from broker.revocation.registry import LiveSessions
from broker.services import totp
from broker.services.certs import (
    PresentedCertificate,
    certificate_refusal,
    grant_principals,
    user_ca_authorized_keys_line,
)
from broker.services.context import Context
from broker.services.grants import Access, check_access
from broker.services.policies import applicable_rules, totp_required
from broker.services.readiness import (
    DATABASE_REFUSAL,
    DRAINING_REFUSAL,
    NodeState,
    new_session_refusal,
)
from broker.services.refusals import RefusalLog
from broker.services.sessions import (
    audit_event,
    close_session,
    kill_reason,
    new_session_id,
    open_session,
    technician_keys,
)
from broker.services.vendors import note_login
from broker.ssh.process import Handler, RelayProcess
from broker.ssh.streams import SSHReceive, SSHSend, pump
from broker.ssh.upstream import connect_device

log = structlog.get_logger("broker.ssh")
DEVICE_ALIASES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_UNAUTHENTICATED_PER_SOURCE = 10


class ClosableChannel(TypingProtocol):
    async def notice(self, text: str) -> None: ...

    async def close_with(self, reason: str) -> None: ...


class ConnectionServices:
    """What every connection shares: the context, the live-session registry, hooks."""

    def __init__(self, ctx: Context, sessions: LiveSessions, public_host: str,
                 public_port: int, process_handler: Handler, user_ca_public: str | None = None,
                 max_auth_tries: int = 6, on_session_change: Any = None,
                 refusal_burst: int = 5, node: NodeState | None = None) -> None:
        self.ctx, self.sessions = ctx, sessions
        self.node = node  # draining, recordings failing: no new sessions
        # every refusal on the SSH side is audited through this one log (rate-limited)
        self.refusals = RefusalLog(ctx, burst=refusal_burst)
        self.user_ca_public = user_ca_public
        self.max_auth_tries = max_auth_tries
        self.process_handler = process_handler
        self.public_host, self.public_port = public_host, public_port
        self.on_session_change = on_session_change
        # unauthenticated connections per source address (pre-auth flood limit)
        self.unauthenticated: Counter[str] = Counter()
        self.max_unauthenticated = MAX_UNAUTHENTICATED_PER_SOURCE


class BrokerConnection(asyncssh.SSHServer):
    def __init__(self, services: ConnectionServices) -> None:
        self.services = services
        self.ctx = services.ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = "unknown"
        self.source = ""
        self.username = ""
        self.target: Target | None = None
        self.authenticated = False
        self.auth_failures = 0
        self.totp_required = False
        self.key_proven = False
        self.refusal: str | None = None  # why this connection's login can not succeed
        self.refusal_kind = "login.failed"
        self.device_id: int | None = None
        self.upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self._session_lock = asyncio.Lock()
        self.recording: SessionRecording | None = None
        self.session_id: str | None = None
        self.ends_at: datetime = datetime.max
        self.channels: set[ClosableChannel] = set()
        self.closing: str | None = None
        self.exit_status: int | None = None  # the last channel's, as the technician's ssh saw it
        self._protocols_used: set[Protocol] = set()
        self._channel_count = 0
        self.protocol = "ssh"  # of the first channel, for /metrics: ssh|sftp|scp|forward

    # -- asyncssh callbacks: connection and authentication ---------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        _wrap_key_validation(conn, self)
        _wrap_forwarding_requests(conn, self)
        # behind a PROXY header, the client's own address (uvloop's transports report the
        # socket's peer from the file descriptor, not from the wrapped socket object)
        peer = (conn.get_extra_info("client_peer") or conn.get_extra_info("peername")
                or ("unknown", 0))
        host = str(peer[0])
        self.peer = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        self.source = host
        pending = self.services.unauthenticated
        pending[self.source] += 1
        if pending[self.source] > self.services.max_unauthenticated:
            self.refusal = "throttled"
            self.refused("login.throttled", pending=pending[self.source])
            # Before the version exchange no message can be shown: close at once, cheaply.
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._leave_pending()
        if not self.authenticated and self.refusal != "throttled":
            reason = self.refusal or ("disconnected before authenticating" if self.username
                                      else "disconnected before naming a user")
            self.refused(self.refusal_kind, reason=reason, failures=self.auth_failures,
                         **({"error": _shown(str(exc))} if exc is not None else {}))
        _background(self._finish("connection closed" if exc is None
                                 else f"connection lost: {exc}"))

    async def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        self.username = username
        try:
            self.target = parse_username(username)
        except UsernameError as exc:
            self.refusal = f"bad user name: {exc}"
            self.conn.send_auth_banner(f"broker: {exc}\r\n")
            return True  # still demand auth, which cannot succeed: fail closed
        tech = self.target.technician
        try:
            keys = await technician_keys(self.ctx, tech)
        except (StoreError, OSError, SQLAlchemyError) as exc:  # nothing can be checked: no
            # new session (fail closed)
            log.error("login refused: database unreachable", client=self.peer, error=str(exc))
            self.refusal = "the broker's database is unreachable"
            self.conn.send_auth_banner(f"broker: {DATABASE_REFUSAL}\r\n")
            return True
        if keys is None:
            self.refusal = "unknown or disabled technician"
            return True  # unknown technician: no key can match; say nothing that tells so
        if self.services.user_ca_public and self.target.device is not None:
            # the broker CA, only for the grants of this technician on this very device
            principals = await grant_principals(self.ctx, tech, self.target.device)
            if principals:
                keys.append(user_ca_authorized_keys_line(self.services.user_ca_public,
                                                         *principals))
        self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(keys)))
        if self.target.device is not None:
            self.totp_required = await totp_required(self.ctx, tech, self.target.device)
            if self.totp_required and not await totp.enrolled(self.ctx, tech):
                self.conn.send_auth_banner(
                    f"broker: {self.target.device} requires a TOTP code and {tech} has none;"
                    f" ask an administrator to run 'broker tech totp enroll {tech}'\r\n")
        return True

    async def certificate_allowed(self, key_data: bytes) -> bool:
        """A certificate opens only its own grant's device while the grant lasts; a plain
        key passes (asyncssh checks it against the registered keys)."""
        try:
            cert = PresentedCertificate.decode(key_data)
            why = None if cert is None else await certificate_refusal(
                self.ctx, cert, self.technician, self.target.device if self.target else None)
        except ValueError as exc:
            cert, why = None, str(exc)
        if why is None:
            return True
        self.refusal = f"certificate refused: {why}"
        if self.conn is not None:
            self.conn.send_auth_banner(f"broker: {self.refusal}\r\n")
        self.refused("login.refused", reason=self.refusal,
                     serial=cert.serial if cert is not None else None)
        return False

    def key_validated(self, valid: bool, signed: bool) -> bool:
        """Called for each public key the client offers (see ``_wrap_key_validation``).
        Returns whether asyncssh should accept it."""
        if not valid:
            self.refusal = self.refusal or "no registered key or valid certificate offered"
            self._failed_attempt()
            return False
        if signed and self.totp_required:
            self.key_proven = True  # proven, but the policy also wants a TOTP code
            return False
        return True

    def kbdint_auth_supported(self) -> bool:
        return self.key_proven

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str
                             ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return ("Vendor access broker", f"{self.device} requires a one-time code.", "",
                [("TOTP code: ", False)])

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        if not self.key_proven or len(responses) != 1:
            return False
        if await totp.verify(self.ctx, self.technician, responses[0]):
            return True
        self._failed_attempt()
        return False

    def _failed_attempt(self) -> None:
        metrics.AUTH_FAILURES.labels("ssh").inc()
        self.auth_failures += 1
        if self.auth_failures >= self.services.max_auth_tries and self.conn is not None:
            self.refusal = f"too many authentication failures ({self.auth_failures})"
            self.refusal_kind = "login.throttled"
            self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                 "broker: too many authentication failures")

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def _leave_pending(self) -> None:
        if self.source and not self.authenticated:
            pending = self.services.unauthenticated
            pending[self.source] -= 1
            if pending[self.source] <= 0:
                del pending[self.source]

    async def auth_completed(self) -> None:
        self._leave_pending()
        self.authenticated = True
        assert self.target is not None
        await audit_event(self.ctx, "login.succeeded", f"technician:{self.target.technician}",
                          self.target.device, client=self.peer,
                          method="publickey+totp" if self.key_proven else "publickey")
        await note_login(self.ctx, self.target.technician)

    def session_requested(self) -> RelayProcess:
        return RelayProcess(self.services.process_handler)

    # -- port forwarding -------------------------------------------------------------------
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        return self._open_forward(dest_host, dest_port, f"{orig_host}:{orig_port}")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.refused("channel.refused", channel="remote-forward",
                     destination=_shown(f"{listen_host}:{listen_port}"))
        return False

    def forwarding_refused(self, what: str) -> None:
        """An agent (``ssh -A``) or X11 (``ssh -X``) forwarding request: never granted."""
        self.refused("channel.refused", channel=what,
                     reason=f"{what} forwarding is never allowed through the broker")

    def refused(self, kind: str, **data: object) -> None:
        """Audit a refusal through the process's rate-limited refusal log (in the
        background, for asyncssh's synchronous callbacks)."""
        _background(self.audit_refusal(kind, **data))

    async def audit_refusal(self, kind: str, **data: object) -> None:
        actor = (f"technician:{self.technician}" if self.authenticated
                 else f"ssh:{self.peer}")
        subject = (self.device or None) if self.authenticated else (
            _shown(self.username) if self.username else None)
        try:
            await self.services.refusals.refused(kind, actor, self.source, subject,
                                                 client=self.peer, **data)
        except (BrokerError, OSError, SQLAlchemyError) as exc:  # the database is away
            log.error("refusal not audited", kind=kind, actor=actor, error=str(exc), **data)

    async def _open_forward(self, host: str, port: int, origin: str) -> SSHTCPStreamSession[bytes]:
        where = f"{host}:{port}"

        async def refuse(reason: str) -> NoReturn:
            self.refused("channel.refused", channel="forward", destination=_shown(where),
                         reason=reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"broker: {reason}")

        if self.target is None or self.target.device is None:
            await refuse("connect as TECH+DEVICE to forward ports to a device")
        access = await self.access(Protocol.FORWARD)
        if not access.allowed:
            await refuse(access.decision.detail)
        assert access.technician is not None and access.device is not None
        if host not in DEVICE_ALIASES | {access.device.name}:
            await refuse(f"forwarding reaches only {access.device.name} (use localhost:PORT),"
                         f" not {_shown(host)}")
        _, rules = applicable_rules(self.ctx.policies(), access.technician, access.device)
        if port not in rules.forward_ports:
            allowed = ", ".join(map(str, sorted(rules.forward_ports))) or "none"
            await refuse(f"port {port} is not allowed on {access.device.name}"
                         f" (allowed: {allowed})")
        try:
            upstream = await self.upstream_connection(access)
        except DeviceError as exc:
            self.refused("channel.refused", channel="forward", destination=_shown(where),
                         reason=str(exc), internal=exc.internal)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            f"broker: {exc}") from None
        try:
            await self.ensure_session(access, "forward")
        except SessionRefused as exc:
            await refuse(str(exc))
        try:
            up_reader, up_writer = await upstream.open_connection("localhost", port)
        except (asyncssh.Error, OSError) as exc:
            await self.audit("forward.failed", destination=where, error=str(exc))
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            f"broker: the device refused port {port}") from None
        assert self.recording is not None
        record = ForwardLog(self.recording.add_file(f"forward-{self.next_channel_number()}",
                                                    ".jsonl"),
                            destination=access.device.name, port=port, origin=origin)

        def to_device(data: bytes) -> None:
            metrics.FORWARD_TO_DEVICE.inc(len(data))
            record.to_device(data)

        def from_device(data: bytes) -> None:
            metrics.FORWARD_FROM_DEVICE.inc(len(data))
            record.from_device(data)

        async def relay(reader: asyncssh.SSHReader[bytes],
                        writer: asyncssh.SSHWriter[bytes]) -> None:
            try:
                await asyncio.gather(pump(SSHReceive(reader), SSHSend(up_writer), to_device),
                                     pump(SSHReceive(up_reader), SSHSend(writer),
                                          from_device))
                record.close()
            except (asyncssh.Error, OSError) as exc:
                record.close(f"error: {exc}")
            finally:
                writer.close()
                up_writer.close()

        return SSHTCPStreamSession(relay)

    # -- access, upstream, session ---------------------------------------------------------
    async def access(self, *protocols: Protocol) -> Access:
        """The first of ``protocols`` the technician's grant allows, or why none is."""
        assert self.target is not None and self.target.device is not None
        result: Access | None = None
        for protocol in protocols:
            result = await check_access(self.ctx, self.target.technician, self.target.device,
                                        protocol)
            if result.allowed:
                self._protocols_used.add(protocol)
                return result
            if result.decision.refusal is not Refusal.PROTOCOL:
                return result
        assert result is not None
        return result

    async def still_allowed(self) -> str | None:
        """None while every protocol this session uses is still granted, else why not."""
        if self.target is None or self.target.device is None:
            return None
        if self.session_id is not None:
            killed = await kill_reason(self.ctx, self.session_id)
            if killed is not None:
                return killed
        for protocol in self._protocols_used or {Protocol.SSH}:
            result = await check_access(self.ctx, self.target.technician, self.target.device,
                                        protocol)
            if not result.allowed:
                return _closing_text(result.decision)
            if result.grant is not None:
                self.ends_at = result.grant.end
        return None

    async def upstream_connection(self, access: Access) -> asyncssh.SSHClientConnection:
        """The connection to the device, shared by every channel of this session."""
        async with self._upstream_lock:
            if self.upstream is None:
                assert access.device is not None and access.device.id is not None
                self.device_id = access.device.id
                self.upstream = await connect_device(self.ctx, access.device.id)
            return self.upstream

    async def ensure_session(self, access: Access, channel: str) -> None:
        """Open the session row and its recording with the first channel."""
        assert access.grant is not None and access.technician is not None
        assert access.device is not None
        async with self._session_lock:
            self.ends_at = access.grant.end
            if self.session_id is not None:
                return
            why = await new_session_refusal(self.ctx, self.services.node)
            if why is not None:
                raise SessionRefused(why, {DRAINING_REFUSAL: "draining",
                                           DATABASE_REFUSAL: "database-unreachable"}.get(
                                               why, "recording-unavailable"))
            now = self.ctx.now()
            self.protocol = {"shell": "ssh", "exec": "ssh"}.get(channel, channel)
            session_id = new_session_id(now)
            try:
                self.recording = SessionRecording.create(
                    self.ctx.config.recordings_dir, session_id, now,
                    {"technician": access.technician.name, "vendor": access.technician.vendor,
                     "device": access.device.name, "grant": access.grant.id,
                     "client": self.peer, "node": self.ctx.node},
                    signer=signer_for(self.ctx.config))
            except OSError as exc:
                raise SessionRefused(
                    f"this broker node cannot record sessions right now"
                    f" ({exc.strerror or exc}); no session opens unrecorded, so try again"
                    " later or tell the hospital's IT", "recording-unavailable") from None
            self.session_id = session_id
            await open_session(self.ctx, access.grant, access.technician, access.device,
                               self.peer, channel, self.recording.path.name, self.session_id)
            self.services.sessions.add(self)
            if callable(self.services.on_session_change):
                self.services.on_session_change()

    def next_channel_number(self) -> int:
        self._channel_count += 1
        return self._channel_count - 1

    async def audit(self, kind: str, **data: object) -> None:
        await audit_event(self.ctx, kind, f"technician:{self.technician}", self.device or None,
                          client=self.peer, **data)

    # -- the live session, as the registry sees it -----------------------------------------
    @property
    def technician(self) -> str:
        return self.target.technician if self.target else ""

    @property
    def device(self) -> str:
        return (self.target.device or "") if self.target else ""

    async def warn(self, text: str) -> None:
        for channel in list(self.channels):
            with contextlib.suppress(Exception):
                await channel.notice(text)

    async def terminate(self, reason: str) -> None:
        """Close every channel with a one-line notice, then the connection."""
        if self.closing is not None:
            return
        self.closing = reason
        await asyncio.gather(*(channel.close_with(reason) for channel in list(self.channels)),
                             return_exceptions=True)
        if self.conn is not None:
            self.conn.close()
        if self.upstream is not None:
            self.upstream.close()

    async def _finish(self, reason: str) -> None:
        self.services.sessions.remove(self)
        if self.upstream is not None:
            self.upstream.close()
        try:
            if self.recording is not None:
                await self.recording.close(self.closing or reason)
            if self.session_id is not None:
                await close_session(self.ctx, self.session_id, self.closing or reason,
                                    self.exit_status)
        except (BrokerError, OSError) as exc:
            log.error("closing the session failed", session=self.session_id, error=str(exc))


_tasks: set[asyncio.Future[object]] = set()


def _background(work: Coroutine[object, object, object]) -> None:
    """Run ``work`` from a synchronous asyncssh callback, keeping a reference until done."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _wrap_key_validation(conn: asyncssh.SSHServerConnection, owner: BrokerConnection) -> None:
    """Let the owner see the outcome of each key check, signature included, and veto it.

    asyncssh has no "partial success": publickey AND keyboard-interactive is built by
    refusing a proven key (remembered by the owner) and then offering keyboard-interactive.
    The signature check lives in the connection's own ``validate_public_key``, so it is
    wrapped on this instance.
    """
    original = conn.validate_public_key

    checked: dict[bytes, bool] = {}  # a key is offered unsigned, then signed: check it once

    async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        if key_data not in checked:
            checked[key_data] = await owner.certificate_allowed(key_data)
        if not checked[key_data]:
            owner._failed_attempt()
            return False
        valid = await original(username, key_data, msg, signature)
        return owner.key_validated(valid, signed=bool(msg))

    conn.validate_public_key = validate  # type: ignore[method-assign]


def _wrap_forwarding_requests(conn: asyncssh.SSHServerConnection,
                              owner: BrokerConnection) -> None:
    """Audit agent and X11 forwarding requests. The listener runs with both off, so asyncssh
    refuses them; it offers no callback, so its two entry points are wrapped here."""
    async def create_agent_listener() -> bool:
        owner.forwarding_refused("agent")
        return False

    async def attach_x11_listener(chan: Any, auth_proto: bytes, auth_data: bytes,
                                  screen: int) -> str | None:
        owner.forwarding_refused("x11")
        return None

    conn.create_agent_listener = create_agent_listener  # type: ignore[method-assign]
    conn.attach_x11_listener = attach_x11_listener  # type: ignore[method-assign]


def _closing_text(decision: AccessDecision) -> str:
    if decision.refusal in (Refusal.EXPIRED, None):
        return "your access window closed"
    return f"access ended: {decision.detail}"


def _shown(text: str) -> str:
    """A client's string for a log line: at most 64 characters, control and non-ASCII
    characters escaped."""
    return text[:64].encode("unicode_escape").decode("ascii")
