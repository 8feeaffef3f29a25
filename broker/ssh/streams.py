"""The relay's contract: byte streams and a pump between them (after trio's stream ABCs).

A pump moves bytes from a :class:`ReceiveStream` to a :class:`SendStream` until end of
file, handing each chunk to a tap (the recorder) without copying it. Back-pressure comes from
``send`` awaiting the sink's drain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import asyncssh

CHUNK = 256 * 1024


class ReceiveStream(Protocol):
    async def receive(self) -> bytes:
        """The next chunk; ``b""`` at end of file."""


class SendStream(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...


Tap = Callable[[bytes], None]


def _no_tap(_data: bytes) -> None:
    return None


async def pump(source: ReceiveStream, sink: SendStream, tap: Tap = _no_tap) -> int:
    """Copy until end of file; return the number of bytes moved."""
    moved = 0
    while data := await source.receive():
        tap(data)
        await sink.send(data)
        moved += len(data)
    await sink.send_eof()
    return moved


class SSHReceive:
    """An asyncssh reader as a :class:`ReceiveStream`.

    Terminal resizes, breaks and signals arrive from asyncssh as exceptions raised by
    ``read``; they are handed to ``on_control`` and reading goes on.
    """

    def __init__(self, reader: asyncssh.SSHReader[bytes],
                 on_control: Callable[[Exception], None] | None = None) -> None:
        self._reader, self._on_control = reader, on_control

    async def receive(self) -> bytes:
        while True:
            try:
                return await self._reader.read(CHUNK)
            except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived,
                    asyncssh.SignalReceived) as event:
                if self._on_control is None:
                    raise
                self._on_control(event)


class SSHSend:
    """An asyncssh writer as a :class:`SendStream`."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes]) -> None:
        self._writer = writer

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def send_eof(self) -> None:
        if self._writer.can_write_eof():
            with contextlib.suppress(BrokenPipeError, OSError, asyncssh.Error):
                self._writer.write_eof()


class SSHSendNoEOF(SSHSend):
    """A channel's stdout or stderr: the channel's exit closes them, not the end of one
    stream (an EOF on stdout would cut off what stderr has still to say)."""

    async def send_eof(self) -> None:
        return None
