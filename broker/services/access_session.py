"""One access session, whatever the protocol: SSH, the device web UI, the next one.

A protocol makes an :class:`AccessSession` for a technician on a device and gives it an
:class:`Endpoint`: how to tell the technician one line, and how to cut its own side. The
session does what every protocol does the same way::

    check ──> open ──────────────> still_allowed? ── warn ──> terminate ──> close
    (grant)   (row, recording,     (revoke, kill,    (a line   (the first    (registry left,
               live registry)       expiry)           before)   reason)       recording sealed,
                                                                              row closed)

- :meth:`check` asks whether the grant allows a protocol now (and remembers that the session
  uses it, so that :meth:`still_allowed` re-checks every protocol in use).
- :meth:`open` writes the session row and creates its recording, then registers with the
  live sessions; it refuses with one line (:class:`SessionRefused`) while this node drains,
  cannot record, or has lost its database: no session runs unrecorded.
- :meth:`still_allowed` is what the registry asks at every revoke, kill and expiry.
- :meth:`terminate` cuts once, through the endpoint; the first reason is the one shown.
- :meth:`close` is called by the protocol when its side is gone; it is idempotent.

A device with a firmware probe is probed when the session opens and again after it closed
(:mod:`broker.services.firmware_probe`); the recording is sealed after the second probe, so
that it holds both readings.

A session is bound either to whichever grant allows the pair (SSH: a second, longer grant
for the same device carries the session on) or, with ``bound_grant``, to one grant only (a
web sign-in is for one grant, and its URLs name it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol as TypingProtocol

import structlog

from broker.domain.grants import AccessDecision, Refusal
from broker.domain.protocols import Protocol
from broker.errors import BrokerError, SessionRefused
from broker.recording import SessionRecording, signer_for
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.firmware_probe import SessionProbes
from broker.services.grants import Access, check_access
from broker.services.readiness import (
    DATABASE_REFUSAL,
    DRAINING_REFUSAL,
    NodeState,
    new_session_refusal,
    recording_refusal,
)
from broker.services.sessions import close_session, kill_reason, new_session_id, open_session

log = structlog.get_logger("broker.sessions")

WINDOW_CLOSED = "your access window closed"
OTHER_GRANT = "access ended: this sign-in belongs to a grant that no longer applies"
_REFUSAL_WORDS = {DRAINING_REFUSAL: "draining", DATABASE_REFUSAL: "database-unreachable"}


class Endpoint(TypingProtocol):
    """A protocol's side of a session."""

    async def notice(self, text: str) -> None:
        """Show the technician one line now (a protocol without a channel for it ignores it)."""

    async def cut(self, reason: str) -> None:
        """End the protocol's side with ``reason`` shown; the protocol then calls
        :meth:`AccessSession.close` (at once, or when its connection is gone)."""


def closing_text(decision: AccessDecision) -> str:
    """Why a running session ends, as the technician reads it."""
    if decision.refusal in (Refusal.EXPIRED, None):
        return WINDOW_CLOSED
    return f"access ended: {decision.detail}"


class AccessSession:
    """Implements :class:`broker.revocation.registry.LiveSession` for every protocol."""

    def __init__(self, ctx: Context, registry: LiveSessions, endpoint: Endpoint, *,
                 technician: str, device: str, client: str, protocol: str,
                 node: NodeState | None = None, bound_grant: int | None = None,
                 on_open: Callable[[datetime], None] | None = None) -> None:
        self.ctx, self.registry, self.endpoint = ctx, registry, endpoint
        self.technician, self.device, self.client = technician, device, client
        self.protocol = protocol  # the /metrics label: ssh, sftp, scp, forward, web
        self.node, self.bound_grant = node, bound_grant
        self.on_open = on_open  # told the session's end when it opens (the scheduler)
        self.ends_at: datetime = datetime.max
        self.session_id: str | None = None
        self.recording: SessionRecording | None = None
        self.closing: str | None = None
        self.protocols: set[Protocol] = set()
        self.probes: SessionProbes | None = None  # the device's firmware probe, if it has one
        self._open_lock = asyncio.Lock()
        self._closed = False

    # -- before: may it start? -------------------------------------------------------------
    async def check(self, *protocols: Protocol) -> Access:
        """The first of ``protocols`` the grant allows now, or why none is."""
        result: Access | None = None
        for protocol in protocols:
            result = await check_access(self.ctx, self.technician, self.device, protocol)
            if result.allowed:
                self.protocols.add(protocol)
                return result
            if result.decision.refusal is not Refusal.PROTOCOL:
                return result
        assert result is not None, "check() needs at least one protocol"
        return result

    async def open(self, access: Access, channel: str,
                   metadata: Mapping[str, object] | None = None) -> SessionRecording:
        """The session row and its recording, registered as live; opened once (later calls
        only take the grant's end). Raises :class:`SessionRefused`."""
        assert access.grant is not None and access.technician is not None
        assert access.device is not None
        async with self._open_lock:
            self.ends_at = access.grant.end
            if self.recording is not None:
                return self.recording
            why = await new_session_refusal(self.ctx, self.node)
            if why is not None:
                raise SessionRefused(why, _REFUSAL_WORDS.get(why, "recording-unavailable"))
            now = self.ctx.now()
            session_id = new_session_id(now)
            try:
                recording = SessionRecording.create(
                    self.ctx.config.recordings_dir, session_id, now,
                    {"technician": access.technician.name, "vendor": access.technician.vendor,
                     "device": access.device.name, "grant": access.grant.id,
                     "client": self.client, "node": self.ctx.node, **(metadata or {})},
                    signer=signer_for(self.ctx.config))
            except OSError as exc:
                error = exc.strerror or str(exc)
                if self.node is not None:
                    self.node.recording_failed(error)
                raise SessionRefused(recording_refusal(error),
                                     "recording-unavailable") from None
            self.session_id, self.recording = session_id, recording
            await open_session(self.ctx, access.grant, access.technician, access.device,
                               self.client, channel, recording.path.name, session_id)
            self.registry.add(self)
            if self.on_open is not None:
                self.on_open(self.ends_at)
            if access.device.probe and access.device.id is not None:
                # before the technician's first byte reaches the device, but not waited for
                self.probes = SessionProbes(self.ctx, access.device.id, session_id,
                                            access.device.probe, recording)
                self.probes.start_before()
            return recording

    # -- during: the registry's questions --------------------------------------------------
    async def still_allowed(self) -> str | None:
        """None while every protocol in use is still granted, else why the session ends."""
        if self.session_id is not None:
            killed = await kill_reason(self.ctx, self.session_id)
            if killed is not None:
                return killed
        for protocol in self.protocols or {Protocol.SSH}:
            access = await check_access(self.ctx, self.technician, self.device, protocol)
            if not access.allowed:
                return closing_text(access.decision)
            if self.bound_grant is not None and (
                    access.grant is None or access.grant.id != self.bound_grant):
                return OTHER_GRANT
            if access.grant is not None:
                self.ends_at = access.grant.end
        return None

    def refusal(self) -> str | None:
        """Why the session may not serve a request right now, without asking the database
        (a protocol that serves requests checks this on each, so that an expiry holds even
        before the scheduler gets to it)."""
        if self.closing is not None:
            return self.closing
        if self.ctx.now() >= self.ends_at:
            return WINDOW_CLOSED
        return None

    async def warn(self, text: str) -> None:
        await self.endpoint.notice(text)

    # -- after: cut and close ----------------------------------------------------------------
    async def terminate(self, reason: str) -> None:
        """Cut the session with ``reason`` (only the first reason counts)."""
        if self.closing is not None:
            return
        self.closing = reason
        await self.endpoint.cut(reason)

    async def close(self, reason: str, exit_status: int | None = None) -> None:
        """The protocol's side is gone: leave the registry, seal the recording, close the
        row. The reason a cut gave wins over the one given here."""
        if self._closed:
            return
        self._closed = True
        self.registry.remove(self)
        why = self.closing or reason
        try:
            if self.recording is not None and self.probes is None:
                await self.recording.close(why)
            if self.session_id is not None:
                await close_session(self.ctx, self.session_id, why, exit_status)
        except (BrokerError, OSError) as exc:
            log.error("closing the session failed", session=self.session_id, error=str(exc))
        if self.probes is not None:  # the after-probe, then the seal: never on the cut's path
            self.probes.finish_later(self.recording, why)
