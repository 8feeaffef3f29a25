"""Partial uploads removed from the device, for the SFTP guard.

An upload that the guard cuts at ``max_size`` leaves on the device what arrived before the
refused WRITE. When that file held nothing but this upload (opened to truncate or to create
it), the broker removes it: after the technician's CLOSE of the handle it sends the device a
REMOVE of its own, and holds the device's answer to the CLOSE until the REMOVE is answered, so
a client that exits on that answer (``scp``) still leaves nothing behind. Audited as
``file.partial_removed``, or ``file.partial_left`` with the device's status.

``scp`` opens "create or open" and truncates in place at the end; whether such an OPEN
creates the file is learnt from an LSTAT the broker sends just before it (no such file:
it does). An upload that appends, or that writes into a file that was already there, is never
removed: its earlier content is not the broker's to delete.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from broker.recording.sftp_wire import LSTAT, REMOVE
from broker.ssh.sftp_frames import Framer
from broker.ssh.sftp_hold import OWN_IDS, STATUS, Answered, Refused, packet, u32s

FX_OK, FX_NO_SUCH_FILE = 0, 2
PARTIAL_IDS = OWN_IDS | 0x08000000  # request ids of the broker's LSTATs and REMOVEs
_U32 = struct.Struct(">I")


@dataclass
class Opened:
    """A file the technician opened, as the guard knows it."""

    path: str
    writing: bool
    raw: bytes = b""  # the path as the client sent it
    fresh: bool = False  # its whole content is this upload (created or truncated by it)


@dataclass
class _Removal:
    path: str
    close_answer: bytes | None = None  # the device's answer to the CLOSE, held
    done: bool = False


class PartialUploads:
    def __init__(self, client: Framer, server: Framer, on_refused: Refused) -> None:
        self._client, self._server, self._on_refused = client, server, on_refused
        self._removing: dict[int, _Removal] = {}  # by the broker's REMOVE id
        self._closing: dict[int, _Removal] = {}  # by the technician's CLOSE id
        self._probing: dict[int, Opened] = {}  # by the broker's LSTAT id
        self._next = PARTIAL_IDS

    def _rid(self) -> int:
        rid, self._next = self._next, self._next + 1
        return rid

    def probe_then_open(self, opened: Opened, pkt: memoryview) -> None:
        """Send an LSTAT of the path, then the technician's OPEN (``pkt``) unchanged; the
        original is dropped (raises :class:`Answered`)."""
        rid = self._rid()
        self._probing[rid] = opened
        self._client.inject(packet(LSTAT, rid, u32s(opened.raw)))
        self._client.inject(_U32.pack(len(pkt)) + bytes(pkt))
        raise Answered

    def remove_after_close(self, opened: Opened, close_rid: int) -> None:
        """Queue the REMOVE of a cut upload right after its CLOSE (being forwarded now)."""
        rid = self._rid()
        self._removing[rid] = self._closing[close_rid] = _Removal(opened.path)
        self._client.inject(packet(REMOVE, rid, u32s(opened.raw)))

    def need(self, rid: int, length: int) -> int | None:
        """Bytes of the device's reply ``rid`` (of ``length``) needed, or None: not ours."""
        if rid in self._removing or rid in self._probing:
            return min(13, length)  # up to the status code
        if rid in self._closing:
            return length  # held whole
        return None

    def reply(self, rid: int, pkt: memoryview) -> bool | None:
        """Take the device's reply ``rid``: True/False to pass/drop it, None: not ours."""
        if rid in self._removing:
            self._removed(self._removing.pop(rid), pkt)
            return False  # the answer to the broker's own REMOVE
        if rid in self._closing:
            removal = self._closing.pop(rid)
            if removal.done:
                return True
            removal.close_answer = _U32.pack(len(pkt)) + bytes(pkt)
            return False
        probed = self._probing.pop(rid, None)
        if probed is not None:
            probed.fresh = _status(pkt) == FX_NO_SUCH_FILE  # the OPEN after it creates it
            return False
        return None

    def _removed(self, removal: _Removal, pkt: memoryview) -> None:
        removal.done = True
        if removal.close_answer is not None:
            self._server.inject(removal.close_answer)
        path, code = removal.path, _status(pkt)
        if code == FX_OK:
            self._on_refused(f"broker: the partial upload {path} was removed from the device",
                             "remove-partial", path, "file.partial_removed")
        else:
            self._on_refused(f"broker: the partial upload {path} could not be removed from the"
                             f" device (SFTP status {code}); it is still there",
                             "remove-partial", path, "file.partial_left")


def _status(pkt: memoryview) -> int | None:
    return _U32.unpack_from(pkt, 5)[0] if pkt[0] == STATUS and len(pkt) >= 9 else None
