"""One technician's SSH connection: authentication, the grant behind it, port forwards,
and its end. asyncssh calls the small protocol callbacks below; everything that needs the
store goes through services. A connection is one recorded session, however many channels
it opens."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from typing import Any
from typing import Protocol as TypingProtocol

import asyncssh
import structlog

from broker import metrics
from broker.aio import within
from broker.domain.protocols import Protocol
from broker.domain.session_rules import NO_SESSION_RULES, SessionRules
from broker.domain.usernames import Target, UsernameError, parse_username
from broker.errors import BrokerError, StoreError
from broker.recording import SessionRecording
from broker.revocation.registry import LiveSessions
from broker.services import totp
from broker.services.access_session import AccessSession
from broker.services.certs import (
    PresentedCertificate,
    certificate_refusal,
    user_ca_authorized_keys_line,
)
from broker.services.context import Context
from broker.services.grants import Access
from broker.services.policies import session_rules
from broker.services.readiness import (
    DATABASE_REFUSAL,
    NodeState,
)
from broker.services.refusals import RefusalLog
from broker.services.sessions import audit_event
from broker.services.ssh_login import login_facts
from broker.services.supervision import ENDED, JOINED, LEFT, PAUSED, RESUMED, Supervision
from broker.services.vendors import login_succeeded
from broker.ssh.forwards import open_forward
from broker.ssh.hooks import background, shown, wrap_forwarding_requests, wrap_key_validation
from broker.ssh.process import Handler, RelayProcess
from broker.ssh.upstream_pool import Lease, UpstreamPool

log = structlog.get_logger("broker.ssh")
MAX_UNAUTHENTICATED_PER_SOURCE = 10
REFUSAL_GRACE = 1.0  # seconds a cut waits for a channel's refusal (audit, line, exit status)
HANG_UP_GRACE = 0.25  # seconds a cut lets the client hang up itself once told
SUPERVISION_NOTICES = {
    JOINED: "hospital supervisor {who} is now watching this session",
    LEFT: "hospital supervisor {who} stopped watching this session",
    PAUSED: "input paused by hospital supervisor {who}",
    RESUMED: "input resumed by hospital supervisor {who}",
}


class ClosableChannel(TypingProtocol):
    async def notice(self, text: str) -> None: ...

    async def close_with(self, reason: str) -> None: ...

    def mark(self, label: str) -> None: ...


class ConnectionServices:
    """What every connection shares: the context, the live-session registry, hooks."""

    def __init__(self, ctx: Context, sessions: LiveSessions, public_host: str,
                 public_port: int, process_handler: Handler, user_ca_public: str | None = None,
                 max_auth_tries: int = 6, on_session_open: Any = None,
                 refusal_burst: int = 5, node: NodeState | None = None,
                 upstream_pool: UpstreamPool | None = None) -> None:
        self.ctx, self.sessions = ctx, sessions
        # device connections kept for the technician's next session ([ssh] device_keepalive)
        self.upstream_pool = upstream_pool or UpstreamPool(keepalive=0)
        self.node = node  # draining, recordings failing: no new sessions
        # every refusal on the SSH side is audited through this one log (rate-limited)
        self.refusals = RefusalLog(ctx, burst=refusal_burst)
        self.user_ca_public = user_ca_public
        self.max_auth_tries = max_auth_tries
        self.process_handler = process_handler
        self.public_host, self.public_port = public_host, public_port
        self.on_session_open = on_session_open
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
        self.upstream_lease: Lease | None = None
        self._upstream_lock = asyncio.Lock()
        self.session: AccessSession | None = None  # once the user name names a device
        self.channels: set[ClosableChannel] = set()
        # channels writing their one-line refusal: a cut lets them finish it first
        self.refusing: set[asyncio.Future[None]] = set()
        self._gone = asyncio.Event()  # the connection is lost (the client hung up, or a cut)
        self.exit_status: int | None = None  # the last channel's, as the technician's ssh saw it
        self._channel_count = 0
        # the policy's command rules and supervision, fixed when the session opens
        self.session_rules: SessionRules = NO_SESSION_RULES
        self.supervision = Supervision(on_event=self._supervision_event)

    # -- asyncssh callbacks: connection and authentication ---------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        wrap_key_validation(conn, self)
        wrap_forwarding_requests(conn, self)
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
        self._gone.set()
        self._leave_pending()
        if not self.authenticated and self.refusal != "throttled":
            reason = self.refusal or ("disconnected before authenticating" if self.username
                                      else "disconnected before naming a user")
            self.refused(self.refusal_kind, reason=reason, failures=self.auth_failures,
                         **({"error": shown(str(exc))} if exc is not None else {}))
        background(self._finish("connection closed" if exc is None
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
        if self.target.device is not None:
            self.session = AccessSession(
                self.ctx, self.services.sessions, self, technician=tech,
                device=self.target.device, client=self.peer, protocol="ssh",
                node=self.services.node, on_open=self.services.on_session_open)
        try:
            facts = await login_facts(self.ctx, tech, self.target.device)
        except (StoreError, OSError) as exc:  # nothing can be checked: no
            # new session (fail closed)
            log.error("login refused: database unreachable", client=self.peer, error=str(exc))
            self.refusal = "the broker's database is unreachable"
            self.conn.send_auth_banner(f"broker: {DATABASE_REFUSAL}\r\n")
            return True
        if facts is None:
            self.refusal = "unknown or disabled technician"
            return True  # unknown technician: no key can match; say nothing that tells so
        keys = list(facts.keys)
        if self.services.user_ca_public and self.target.device is not None and facts.principals:
            # the broker CA, only for the grants of this technician on this very device
            keys.append(user_ca_authorized_keys_line(self.services.user_ca_public,
                                                     *facts.principals))
        self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(keys)))
        if self.target.device is not None:
            self.totp_required = facts.totp_required
            if self.totp_required and not facts.totp_enrolled:
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
            self.failed_attempt()
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
        self.failed_attempt()
        return False

    def failed_attempt(self) -> None:
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
        await login_succeeded(self.ctx, self.target.technician, self.target.device,
                              client=self.peer,
                              method="publickey+totp" if self.key_proven else "publickey")

    def session_requested(self) -> RelayProcess:
        return RelayProcess(self.services.process_handler)

    # -- port forwarding -------------------------------------------------------------------
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> Any:
        return open_forward(self, dest_host, dest_port, f"{orig_host}:{orig_port}")

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.refused("channel.refused", channel="remote-forward",
                     destination=shown(f"{listen_host}:{listen_port}"))
        return False

    def forwarding_refused(self, what: str) -> None:
        """An agent (``ssh -A``) or X11 (``ssh -X``) forwarding request: never granted."""
        self.refused("channel.refused", channel=what,
                     reason=f"{what} forwarding is never allowed through the broker")

    def refused(self, kind: str, **data: object) -> None:
        """Audit a refusal through the process's rate-limited refusal log (in the
        background, for asyncssh's synchronous callbacks)."""
        background(self.audit_refusal(kind, **data))

    async def audit_refusal(self, kind: str, **data: object) -> None:
        actor = (f"technician:{self.technician}" if self.authenticated
                 else f"ssh:{self.peer}")
        subject = (self.device or None) if self.authenticated else (
            shown(self.username) if self.username else None)
        try:
            await self.services.refusals.refused(kind, actor, self.source, subject,
                                                 client=self.peer, **data)
        except (BrokerError, OSError) as exc:  # the database is away
            log.error("refusal not audited", kind=kind, actor=actor, error=str(exc), **data)

    # -- access, upstream, session ---------------------------------------------------------
    async def access(self, *protocols: Protocol) -> Access:
        """The first of ``protocols`` the technician's grant allows, or why none is."""
        assert self.session is not None, "access is checked only for TECH+DEVICE"
        return await self.session.check(*protocols)

    async def upstream_connection(self, access: Access) -> asyncssh.SSHClientConnection:
        """The connection to the device, shared by every channel of this session."""
        async with self._upstream_lock:
            if self.upstream is None:
                assert access.device is not None and access.device.id is not None
                self.device_id = access.device.id
                self.upstream_lease = await self.services.upstream_pool.acquire(
                    self.ctx, access.device.id, self.technician)
                self.upstream = self.upstream_lease.connection
            return self.upstream

    async def ensure_session(self, access: Access, channel: str) -> None:
        """Open the session row and its recording with the first channel."""
        assert self.session is not None
        first = self.session.session_id is None
        if first:
            self.session.protocol = {"shell": "ssh", "exec": "ssh"}.get(channel, channel)
        await self.session.open(access, channel)
        if first:  # nothing is awaited between the open and this: every channel sees them
            assert access.technician is not None and access.device is not None
            self.session_rules = session_rules(self.ctx.policies(), access.technician,
                                               access.device)
            self.supervision.required = self.session_rules.supervision_required

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session else None

    @property
    def recording(self) -> SessionRecording | None:
        return self.session.recording if self.session else None

    @property
    def closing(self) -> str | None:
        return self.session.closing if self.session else None

    def next_channel_number(self) -> int:
        self._channel_count += 1
        return self._channel_count - 1

    async def audit(self, kind: str, **data: object) -> None:
        await audit_event(self.ctx, kind, f"technician:{self.technician}", self.device or None,
                          client=self.peer, **data)

    @property
    def technician(self) -> str:
        return self.target.technician if self.target else ""

    @property
    def device(self) -> str:
        return (self.target.device or "") if self.target else ""

    # -- the session's endpoint (broker.services.access_session.Endpoint) ------------------
    async def notice(self, text: str) -> None:
        for channel in list(self.channels):
            with contextlib.suppress(Exception):
                await channel.notice(text)

    async def cut(self, reason: str) -> None:
        """Close every channel with a one-line notice, then the connection; the session is
        closed when the connection is gone (:meth:`connection_lost`)."""
        self.supervision.close()
        told = bool(self.channels or self.refusing)
        await asyncio.gather(*(channel.close_with(reason) for channel in list(self.channels)),
                             return_exceptions=True)
        if self.upstream is not None:  # the device side first: no forward outlives the waits
            self.upstream.close()
        if self.refusing:
            await asyncio.wait(list(self.refusing), timeout=REFUSAL_GRACE)
        if self.conn is not None:
            if told:  # a client whose channels all closed hangs up itself, its lines written
                # (OpenSSH drops what it has not yet written when the server disconnects)
                with contextlib.suppress(TimeoutError):
                    await within(HANG_UP_GRACE, self._gone.wait())
            self.conn.close()

    async def _supervision_event(self, kind: str, who: str) -> None:
        """A supervisor joined, left, paused, resumed or ended: audited, marked in the
        recording, and the technician is told."""
        for channel in list(self.channels):
            channel.mark(f"{kind}: {who}")
        # the staff member acts on the session; who and what it is ride along
        await audit_event(self.ctx, kind, f"staff:{who}", f"session:{self.session_id}",
                          technician=self.technician, device=self.device, client=self.peer)
        told = SUPERVISION_NOTICES.get(kind)
        if told is not None:
            await self.notice(told.format(who=who))

    async def end_by_supervisor(self, who: str) -> None:
        await self._supervision_event(ENDED, who)
        if self.session is not None:
            await self.session.terminate(f"hospital supervisor {who} ended this session")

    async def _finish(self, reason: str) -> None:
        self.supervision.close()
        ending = []
        if self.upstream_lease is not None:  # kept only after a session that ended by itself
            # (a release may wait a moment for the device's last channels: not the seal)
            ending.append(self.services.upstream_pool.release(
                self.upstream_lease, reusable=self.closing is None and self.authenticated))
        if self.session is not None:
            ending.append(self.session.close(reason, self.exit_status))
        await asyncio.gather(*ending)
