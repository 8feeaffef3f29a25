"""SFTP uploads held at the broker for the malware scan (``[scan]``), for the SFTP guard.

With a scanner configured, an OPEN for writing is answered by the broker with a handle of
its own: the device never sees it. WRITEs to that handle go to a 0600 spool file (answered
``OK``), FSTAT reports the spooled size, FSETSTAT is remembered, READ is refused. On CLOSE the
file is scanned; if infected (or unscannable with ``on_error = "refuse"``) the CLOSE is answered
``SSH_FX_PERMISSION_DENIED`` with the verdict and the file is dropped. If clean, the broker
replays it to the device with request ids of its own (OPEN, pipelined WRITEs, the FSETSTATs,
CLOSE) and answers the technician's CLOSE with the device's final status. The replay runs as a
task, so the technician's other requests keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.recording.oplog import decode_path
from broker.recording.sftp_wire import (
    CLOSE,
    FSETSTAT,
    FSTAT,
    HANDLE,
    OPEN,
    READ,
    WRITE,
)
from broker.scan.hold import Held, Scanner
from broker.ssh.sftp_frames import Framer

if TYPE_CHECKING:
    from broker.ssh.transfer_relay import TransferRelay

FX_OK, FX_PERMISSION_DENIED, FX_FAILURE = 0, 3, 4
STATUS, ATTRS = 101, 105
OWN_IDS = 0xF0000000  # request ids the broker uses itself (replaying held uploads)
REPLAY_CHUNK = 32 * 1024
REPLAY_WINDOW = 16
HELD_REQUESTS = frozenset({WRITE, READ, FSTAT, FSETSTAT, CLOSE})
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_QI = struct.Struct(">QI")

Refused = Callable[[str, str, str, str], None]  # (message, operation, path, audit event)


class Denied(Exception):
    """A request refused by the file rules: answered with the message, never forwarded."""

    def __init__(self, message: str, op: str, path: str) -> None:
        super().__init__(message)
        self.op, self.path = op, path


class Answered(Exception):
    """The broker answered the request itself (a held upload): not forwarded."""


@dataclass
class _HeldOpen:
    held: Held
    request: bytes  # the OPEN request after its id, to replay
    attrs: list[bytes] = field(default_factory=list)  # FSETSTAT attributes to replay


def u32s(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def packet(kind: int, rid: int, body: bytes) -> bytes:
    payload = bytes([kind]) + _U32.pack(rid) + body
    return _U32.pack(len(payload)) + payload


def status_packet(rid: int, code: int, message: str) -> bytes:
    return packet(STATUS, rid, _U32.pack(code) + u32s(message.encode("utf-8", "backslashreplace"))
                  + u32s(b"en"))


def read_string(pkt: memoryview, pos: int) -> tuple[bytes, int]:
    n = _U32.unpack_from(pkt, pos)[0]
    end = pos + 4 + n
    if end > len(pkt):
        raise struct.error("string runs past the end of the packet")
    return bytes(pkt[pos + 4:end]), end


class Holds:
    """The held uploads of one SFTP channel (see the module doc)."""

    def __init__(self, scanner: Scanner, *, client: Framer, server: Framer,
                 on_refused: Refused, check_size: Callable[[str, int], None],
                 check_setstat: Callable[[str, memoryview, int], None]) -> None:
        """``client``/``server``: the guard's framers (packets for the device / for the
        technician are injected there); ``check_size(path, end)`` and
        ``check_setstat(path, pkt, pos)`` raise :class:`Denied` as the rules say."""
        self._scanner = scanner
        self._client, self._server = client, server
        self._on_refused = on_refused
        self._check_size, self._check_setstat = check_size, check_setstat
        self._held: dict[bytes, _HeldOpen] = {}  # the broker's handles of held uploads
        self._closing: list[tuple[int, _HeldOpen]] = []
        self._own: dict[int, asyncio.Future[bytes]] = {}
        self._next_own = OWN_IDS
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._held)

    def holds(self, handle: bytes) -> bool:
        return handle in self._held

    def waits_for(self, rid: int) -> bool:
        return rid in self._own

    def open(self, rid: int, path: str, request: bytes) -> None:
        """Hold the upload OPEN ``rid`` asked for: answer with the broker's own handle."""
        handle = b"broker-held-%d" % rid
        self._held[handle] = _HeldOpen(self._scanner.hold(path), request)
        self._server.inject(packet(HANDLE, rid, u32s(handle)))
        raise Answered

    def request(self, kind: int, rid: int, pkt: memoryview) -> None:
        """A request on a held upload's handle: answered here (raises :class:`Answered`)."""
        if kind not in HELD_REQUESTS:
            return
        handle, pos = read_string(pkt, 5)
        held = self._held.get(handle)
        if held is None:
            return
        name = held.held.name
        if kind == WRITE:
            offset, length = _QI.unpack_from(pkt, pos)
            self._check_size(name, offset + length)
            held.held.write_at(offset, pkt[pos + 12:pos + 12 + length])
            refusal = held.held.refusal  # the spool takes no more: the client stops
            self._server.inject(status_packet(rid, FX_OK, "") if refusal is None
                                else status_packet(rid, FX_FAILURE, refusal))
        elif kind == FSTAT:
            self._server.inject(packet(ATTRS, rid, _U32.pack(1) + _U64.pack(held.held.size)))
        elif kind == FSETSTAT:
            self._check_setstat(name, pkt, pos)
            held.attrs.append(bytes(pkt[pos:]))
            self._server.inject(status_packet(rid, FX_OK, ""))
        elif kind == READ:
            self._server.inject(status_packet(rid, FX_FAILURE, "broker: the file is held"
                                              " for the malware scan"))
        else:  # CLOSE: scan, then replay (settle)
            del self._held[handle]
            self._closing.append((rid, held))
        raise Answered

    def reply(self, rid: int, pkt: memoryview) -> bool:
        """Take the device's reply to one of the broker's own requests (True if it was)."""
        own = self._own.pop(rid, None)
        if own is None:
            return False
        if not own.done():
            own.set_result(bytes(pkt))
        return True

    async def settle(self, relay: TransferRelay) -> None:
        while self._closing:
            rid, held = self._closing.pop(0)
            task = asyncio.ensure_future(self._replay(relay, rid, held))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for held in self._held.values():
            held.held.discard()
        for _, held in self._closing:
            held.held.discard()
        for future in self._own.values():
            future.cancel()

    def _call(self, relay: TransferRelay, kind: int, body: bytes) -> asyncio.Future[bytes]:
        rid, self._next_own = self._next_own, self._next_own + 1
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._own[rid] = future
        self._client.inject(packet(kind, rid, body))
        relay.push()
        return future

    async def _replay(self, relay: TransferRelay, rid: int, held: _HeldOpen) -> None:
        file = held.held
        answer = status_packet(rid, FX_FAILURE, "broker: the upload could not be completed")
        try:
            judgement = await self._scanner.judge(file)
            if judgement.message is not None and judgement.event is not None:
                self._on_refused(judgement.message, "upload", file.name, judgement.event)
            if not judgement.allowed:
                assert judgement.message is not None
                answer = status_packet(rid, FX_PERMISSION_DENIED, judgement.message)
                return
            reply = await self._call(relay, OPEN, held.request)
            if reply[0] != HANDLE:
                answer = _restatus(rid, reply)
                return
            handle = read_string(memoryview(reply), 5)[0]
            answer = await self._write_all(relay, rid, handle, held)
        finally:
            file.discard()
            await relay.audit()  # before the technician hears of it and hangs up
            self._server.inject(answer)
            relay.push()

    async def _write_all(self, relay: TransferRelay, rid: int, handle: bytes,
                         held: _HeldOpen) -> bytes:
        """WRITE the spooled file to the device's handle, replay FSETSTAT, CLOSE: the
        answer to the technician's CLOSE."""
        inflight: list[asyncio.Future[bytes]] = []
        failure: bytes | None = None
        offset = held.held.start or 0  # a resumed upload leaves the bytes before it alone
        while failure is None and (chunk := held.held.read_at(offset, REPLAY_CHUNK)):
            inflight.append(self._call(relay, WRITE, u32s(handle) + _U64.pack(offset)
                                       + u32s(chunk)))
            offset += len(chunk)
            if len(inflight) >= REPLAY_WINDOW:
                failure = _failed(await inflight.pop(0))
            await relay.drain_device()
        for future in inflight:
            failure = failure or _failed(await future)
        for attrs in held.attrs:
            failure = failure or _failed(await self._call(relay, FSETSTAT,
                                                          u32s(handle) + attrs))
        closed = await self._call(relay, CLOSE, u32s(handle))
        return _restatus(rid, failure or closed)


def _failed(reply: bytes) -> bytes | None:
    """The reply, when it is not a STATUS OK."""
    ok = reply[0] == STATUS and _U32.unpack_from(reply, 5)[0] == FX_OK
    return None if ok else reply


def _restatus(rid: int, reply: bytes) -> bytes:
    """The device's STATUS reply as the answer to the technician's request ``rid``."""
    if reply[0] != STATUS:
        return status_packet(rid, FX_FAILURE, "broker: unexpected reply from the device")
    code = _U32.unpack_from(reply, 5)[0]
    with contextlib.suppress(struct.error):
        return status_packet(rid, code, decode_path(read_string(memoryview(reply), 9)[0]))
    return status_packet(rid, code, "")
