"""The two sinks of a file-transfer channel relayed under file rules (policy key ``files``).

A guard (:class:`~broker.ssh.sftp_guard.SFTPGuard` or
:class:`~broker.ssh.scp_guard.ScpGuard`) sees every chunk of each direction and says what
goes on (``pieces``) and what it answers itself to the other side (``replies``). The
recorder is fed what each side actually received, so refused operations show in the
recording with the broker's answer. Refusals are audited (``file.denied``) as they happen;
a stream the guard cannot follow cuts the channel (fail closed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncssh
import structlog

from broker.ssh.sftp_frames import FrameError, Piece

log = structlog.get_logger("broker.ssh")
Tap = Callable[[bytes], None]


class Guard(Protocol):
    def from_client(self, data: bytes) -> list[Piece]: ...

    def from_server(self, data: bytes) -> list[Piece]: ...

    def replies_to_client(self) -> list[bytes]: ...

    def replies_to_device(self) -> list[bytes]: ...

    async def settle(self, relay: TransferRelay) -> None:
        """Work that needs waiting (a held upload's scan), after each chunk."""

    def close(self) -> None:
        """The channel ended: drop whatever is held."""


class TransferRelay:
    """Build with the channel's writers; use :attr:`inbound` and :attr:`outbound` as the
    pump sinks and :meth:`tap_client`/:meth:`tap_server` as the pump taps."""

    def __init__(self, guard: Guard, to_device: asyncssh.SSHWriter[bytes],
                 to_client: asyncssh.SSHWriter[bytes], record_client: Tap, record_server: Tap,
                 *, raw_client: bool, raw_server: bool,
                 audit: Callable[[], Awaitable[None]], cut: Callable[[str], None]) -> None:
        """``raw_client``: the recorder gets the technician's bytes as sent (else as the
        device received them); ``raw_server`` the same for the device's bytes."""
        self._guard = guard
        self._to_device, self._to_client = to_device, to_client
        self._record_client, self._record_server = record_client, record_server
        self._raw_client, self._raw_server = raw_client, raw_server
        self._audit, self._cut = audit, cut
        self.inbound = _Sink(self, True)
        self.outbound = _Sink(self, False)

    def tap_client(self, data: bytes) -> None:
        if self._raw_client:
            self._record_client(data)

    def tap_server(self, data: bytes) -> None:
        if self._raw_server:
            self._record_server(data)

    def _write(self, to_device: bool, pieces: list[Piece]) -> None:
        writer = self._to_device if to_device else self._to_client
        record = None
        if to_device and not self._raw_client:
            record = self._record_client
        elif not to_device and not self._raw_server:
            record = self._record_server
        for piece in pieces:
            writer.write(piece if isinstance(piece, bytes) else bytes(piece))
            if record is not None:
                record(piece if isinstance(piece, bytes) else bytes(piece))

    def send_to_client(self, data: bytes) -> None:
        self._write(False, [data])

    def send_to_device(self, data: bytes) -> None:
        self._write(True, [data])

    def close(self) -> None:
        self._guard.close()

    def push(self) -> None:
        """Send the guard's queued answers now (from a task, between chunks)."""
        self._flush_replies()

    async def audit(self) -> None:
        await self._audit()

    async def drain_device(self) -> None:
        await self._to_device.drain()

    def _flush_replies(self) -> None:
        self._write(False, list(self._guard.replies_to_client()))
        self._write(True, list(self._guard.replies_to_device()))

    async def send(self, data: bytes, from_client: bool) -> None:
        try:
            pieces = (self._guard.from_client if from_client else self._guard.from_server)(data)
        except FrameError as exc:
            log.warning("file transfer relay cut", error=str(exc))
            self._cut(str(exc))
            return
        await self._audit()  # before the technician hears of a refusal and hangs up
        self._write(from_client, pieces)
        self._flush_replies()
        try:
            await self._guard.settle(self)
        finally:
            await self._audit()
        with contextlib.suppress(BrokenPipeError, asyncssh.Error):
            await (self._to_device if from_client else self._to_client).drain()


class _Sink:
    def __init__(self, relay: TransferRelay, from_client: bool) -> None:
        self._relay, self._from_client = relay, from_client

    async def send(self, data: bytes) -> None:
        await self._relay.send(data, self._from_client)

    async def send_eof(self) -> None:
        if not self._from_client:
            return  # the channel's exit closes the technician's side
        writer = self._relay._to_device
        if writer.can_write_eof():
            with contextlib.suppress(BrokenPipeError, OSError, asyncssh.Error):
                writer.write_eof()
