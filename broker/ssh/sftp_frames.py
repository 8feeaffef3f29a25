"""Streaming SFTP packet framing for an active relay: decide each packet from its first bytes.

A :class:`Framer` walks the chunks of one direction of an SFTP byte stream. For each packet it
asks its owner how many leading bytes it needs (``need``), then for a verdict on them
(``decide``): pass the packet on, or drop it. It returns the pieces of the chunk to forward,
without copying when a chunk is forwarded whole (the common case: file data passes through
as the very ``bytes`` object read). Only a packet head that straddles two chunks is held.
Injected packets (the relay's own replies) go out only between packets (:meth:`inject`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from broker.recording.sftp_wire import HARD_MAX_PACKET

_U32 = struct.Struct(">I")

Piece = bytes | memoryview


class FrameError(Exception):
    """The stream is not SFTP (a bad packet length): the relay must stop."""


class Framer:
    def __init__(self, need: Callable[[memoryview], int],
                 decide: Callable[[memoryview], bool]) -> None:
        """``need(head)`` (head holds at least 5 bytes: length and type) is how many leading
        bytes of the packet ``decide`` wants, at most the whole packet; it may grow as more
        of the head is known. ``decide(head)`` is True to pass the packet, False to drop it."""
        self._need, self._decide = need, decide
        self._head = bytearray()  # the held start of an undecided packet
        self._left = 0  # bytes of the current packet still to pass or drop
        self._pass = True
        self._queue: list[bytes] = []

    @property
    def at_boundary(self) -> bool:
        return not self._left and not self._head

    def inject(self, packet: bytes) -> None:
        """Queue a whole packet to send at the next packet boundary (see :meth:`flush`)."""
        self._queue.append(packet)

    def flush(self) -> list[bytes]:
        """Queued packets that may go out now (none while inside a packet)."""
        if not self._queue or not self.at_boundary:
            return []
        out, self._queue = self._queue, []
        return out

    def _required(self, head: memoryview) -> int:
        """Bytes of the packet needed before deciding (5 until the type is known)."""
        if len(head) < 5:
            return 5
        length = _U32.unpack_from(head)[0]
        if length < 5 or length > HARD_MAX_PACKET:
            raise FrameError(f"SFTP packet length {length} is out of range")
        return int(min(4 + length, max(5, self._need(head))))

    def feed(self, data: bytes) -> list[Piece]:
        """The pieces of ``data`` (and of held heads) to forward, with injections in place."""
        pieces: list[Piece] = []
        mv = memoryview(data)
        n, pos = len(mv), 0
        run: int | None = None  # start of the run of this chunk being passed on

        def close_run(end: int) -> None:
            nonlocal run
            if run is not None and end > run:
                pieces.append(mv[run:end])
            run = None

        while pos < n:
            if self._left:
                take = min(self._left, n - pos)
                if self._pass and run is None:
                    run = pos
                elif not self._pass:
                    close_run(pos)
                pos += take
                self._left -= take
                continue
            if self._queue:
                close_run(pos)
                pieces += self.flush()
            if not self._head:
                head = mv[pos:]
                need = self._required(head)
                while len(head) >= need and (more := self._required(head[:need])) > need:
                    need = more
                if len(head) >= need:
                    verdict = self._decide(head[:need])
                    if verdict and run is None:
                        run = pos
                    elif not verdict:
                        close_run(pos)
                    self._pass = verdict
                    self._left = 4 + _U32.unpack_from(head)[0]
                    continue
                close_run(pos)
            need = self._required(memoryview(self._head))
            while len(self._head) >= need and (
                    more := self._required(memoryview(self._head)[:need])) > need:
                need = more
            take = min(need - len(self._head), n - pos)
            self._head += mv[pos:pos + take]
            pos += take
            if len(self._head) < need:
                continue
            if self._required(memoryview(self._head)) > need:
                continue  # the head now shows that more of it is needed
            with memoryview(self._head) as held:
                verdict = self._decide(held)
                total = 4 + _U32.unpack_from(held)[0]
            self._pass = verdict
            if verdict:
                pieces.append(bytes(self._head))
            self._left = total - len(self._head)
            self._head.clear()
        close_run(n)
        if self._queue and self.at_boundary:
            pieces += self.flush()
        if len(pieces) == 1 and isinstance(pieces[0], memoryview) and len(pieces[0]) == n:
            return [data]  # the whole chunk: pass the original object on (no copy)
        return pieces
