"""Local port forwards (``ssh -L``): only to the granted device, only to the ports its
policy names, each recorded both ways."""

from __future__ import annotations

import asyncio
from typing import NoReturn
from typing import Protocol as TypingProtocol

import asyncssh
from asyncssh.stream import SSHTCPStreamSession

from broker import metrics
from broker.domain.protocols import Protocol
from broker.domain.session_rules import SessionRules
from broker.domain.usernames import Target
from broker.errors import DeviceError, RecordingUnavailable, SessionRefused
from broker.recording import SessionRecording
from broker.recording.files import Kind as Recorded
from broker.recording.forward import ForwardLog
from broker.services.context import Context
from broker.services.grants import Access
from broker.services.policies import applicable_rules
from broker.ssh.hooks import shown as _shown
from broker.ssh.streams import SSHReceive, SSHSend, pump

DEVICE_ALIASES = frozenset({"localhost", "127.0.0.1", "::1"})


class ForwardingConnection(TypingProtocol):
    """What a forward needs of the technician's connection."""

    ctx: Context
    target: Target | None
    session_rules: SessionRules

    @property
    def recording(self) -> SessionRecording | None: ...

    def refused(self, kind: str, **data: object) -> None: ...

    async def access(self, *protocols: Protocol) -> Access: ...

    async def upstream_connection(self, access: Access) -> asyncssh.SSHClientConnection: ...

    async def ensure_session(self, access: Access, channel: str) -> None: ...

    async def audit(self, kind: str, **data: object) -> None: ...

    def next_channel_number(self) -> int: ...


async def open_forward(self: ForwardingConnection, host: str, port: int, origin: str
                       ) -> SSHTCPStreamSession[bytes]:
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
    if self.session_rules.supervision_required:
        await refuse("port forwarding is not available in a supervised session")
    try:
        up_reader, up_writer = await upstream.open_connection("localhost", port)
    except (asyncssh.Error, OSError) as exc:
        await self.audit("forward.failed", destination=where, error=str(exc))
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                        f"broker: the device refused port {port}") from None
    assert self.recording is not None
    try:
        record = ForwardLog(self.recording.file_for(Recorded.FORWARD,
                                                    self.next_channel_number()),
                            destination=access.device.name, port=port, origin=origin)
    except RecordingUnavailable as exc:
        up_writer.close()
        await refuse(str(exc))

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
