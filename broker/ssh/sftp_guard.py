"""File transfer rules on a relayed SFTP subsystem (which OpenSSH 9's ``scp`` uses too).

The relay copies SFTP bytes between technician and device; with file rules in force, both
directions go through a :class:`~broker.ssh.sftp_frames.Framer` owned by an
:class:`SFTPGuard`, which decides each packet from its head before any of it moves:

* a request the rules refuse (an OPEN for writing when uploads are denied, a name in
  ``deny_names``, a path outside ``paths``, a rename to a denied name, a WRITE beyond
  ``max_size``...) is not forwarded: the guard answers it itself with ``SSH_FX_PERMISSION_DENIED``
  and the refusal as the message, which ``sftp`` and ``scp`` print;
* a DATA reply that would carry a downloaded file past ``max_size`` is dropped and the read
  answered with the refusal instead, which cuts the download at the limit;
* an upload cut at ``max_size`` into a file it created or truncated leaves no partial file
  (``broker/ssh/sftp_partial.py``);
* request types and extensions the guard does not know are refused (fail closed);
* with ``[scan]`` on, uploads are held at the broker and scanned before the device sees them
  (``broker/ssh/sftp_hold.py``).

Relative paths are resolved against the directory the device answered to the client's first
``REALPATH "."`` (OpenSSH's ``sftp`` asks at start); before that, with ``paths`` in force,
they are refused. Each refusal is handed to ``on_refused`` (audited as ``file.denied``); the
recording shows the refused operation with its ``permission_denied`` result, because the
recorder is fed what the technician actually received.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.domain.file_rules import FileRules, Transfer, link_target
from broker.recording.oplog import decode_path
from broker.recording.sftp_wire import (
    CLOSE,
    DATA,
    EXTENDED,
    FSETSTAT,
    FSTAT,
    HANDLE,
    INIT,
    LINK,
    LSTAT,
    MKDIR,
    NAME,
    OPEN,
    OPENDIR,
    READ,
    READDIR,
    READLINK,
    REALPATH,
    REMOVE,
    RENAME,
    RMDIR,
    SETSTAT,
    STAT,
    SYMLINK,
    VERSION,
    WRITE,
)
from broker.scan.hold import Scanner
from broker.ssh.sftp_frames import Framer, Piece
from broker.ssh.sftp_hold import (
    OWN_IDS,
    Answered,
    Denied,
    Holds,
    status_packet,
)
from broker.ssh.sftp_hold import read_string as _string
from broker.ssh.sftp_partial import Opened, PartialUploads

if TYPE_CHECKING:
    from broker.ssh.transfer_relay import TransferRelay

FX_PERMISSION_DENIED = 3
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_II = struct.Struct(">II")
_QI = struct.Struct(">QI")
_READ_ONLY = frozenset({STAT, LSTAT, FSTAT, OPENDIR, READDIR, READLINK, CLOSE})
_EXT_READ_ONLY = frozenset({
    "statvfs@openssh.com", "fstatvfs@openssh.com", "fsync@openssh.com", "limits@openssh.com",
    "expand-path@openssh.com", "home-directory", "users-groups-by-id@openssh.com",
    "check-file-handle", "check-file-name", "space-available"})
# v3 pflags that change the file; v5+ ACE4 WRITE_DATA | APPEND_DATA.
_V3_WRITING = 0x2 | 0x4 | 0x8 | 0x10
_V5_WRITING = 0x2 | 0x4
_V5_OPEN_EXISTING = 2
_V3_FRESH = 0x10 | 0x20  # TRUNC, EXCL: what is in the file afterwards is this upload's
_V3_CREAT, _V3_APPEND = 0x08, 0x04
_V5_FRESH = frozenset({0, 1, 4})  # CREATE_NEW, CREATE_TRUNCATE, TRUNCATE_EXISTING
_V5_OPEN_OR_CREATE = 3

Refused = Callable[[str, str, str, str], None]  # (message, operation, path, audit event)


def _path(pkt: memoryview, pos: int) -> tuple[str, int]:
    raw, end = _string(pkt, pos)
    return decode_path(raw), end


def _attr_size(pkt: memoryview, pos: int) -> int | None:
    """The size in v3 ATTRS at ``pos`` (v4+ put it at the same place after a type byte)."""
    flags = _U32.unpack_from(pkt, pos)[0]
    return _U64.unpack_from(pkt, pos + 4)[0] if flags & 0x1 else None


class SFTPGuard:
    def __init__(self, rules: FileRules, on_refused: Refused, *,
                 symlink_target_first: bool = True, scanner: Scanner | None = None) -> None:
        self.rules = rules
        self._on_refused = on_refused
        self._target_first = symlink_target_first
        self.client = Framer(self._client_need, self._client_decide)
        self.server = Framer(self._server_need, self._server_decide)
        self.version = 3
        self.home: str | None = None
        self._handles: dict[bytes, Opened] = {}
        self._opens: dict[int, Opened] = {}
        self._reads: dict[int, tuple[Opened, int]] = {}
        self._home_request: int | None = None
        self._asked_home = False
        self._oversized: set[bytes] = set()  # handles whose upload was cut at max_size
        self._scanning = scanner is not None
        self._holds = None if scanner is None else Holds(
            scanner, client=self.client, server=self.server, on_refused=on_refused,
            check_size=self._check_write_size, check_setstat=self._held_setstat)
        self._partial = PartialUploads(self.client, self.server, on_refused)

    # -- technician -> device ---------------------------------------------------------------

    def from_client(self, data: bytes) -> list[Piece]:
        return self.client.feed(data)

    def replies_to_client(self) -> list[bytes]:
        return self.server.flush()

    def replies_to_device(self) -> list[bytes]:
        return self.client.flush()

    def _client_need(self, head: memoryview) -> int:
        if head[4] == WRITE and len(head) >= 13:
            hend = 13 + int(_U32.unpack_from(head, 9)[0])
            if self._holds and len(head) >= hend and self._holds.holds(bytes(head[13:hend])):
                return 4 + int(_U32.unpack_from(head)[0])  # spooled: the whole packet
            return hend + 12
        if head[4] == WRITE:
            return 13
        return 4 + int(_U32.unpack_from(head)[0])

    def _client_decide(self, head: memoryview) -> bool:
        pkt = head[4:]
        kind = pkt[0]
        if kind == INIT:
            return True
        rid = _U32.unpack_from(pkt, 1)[0]
        try:
            if rid >= OWN_IDS:
                raise Denied("broker: request ids from 0xF0000000 on are the broker's",
                             "malformed", "")
            if self._holds:
                self._holds.request(kind, rid, pkt)
            self._request(kind, rid, pkt)
        except Answered:
            return False
        except Denied as refusal:
            self._refuse(rid, str(refusal), refusal.op, refusal.path)
            return False
        except (struct.error, IndexError):
            self._refuse(rid, "broker: malformed SFTP request refused", "malformed", "")
            return False
        return True

    def _refuse(self, rid: int, message: str, op: str, path: str) -> None:
        self.server.inject(status_packet(rid, FX_PERMISSION_DENIED, message))
        self._on_refused(message, op, path, "file.denied")

    def _check(self, transfer: Transfer, op: str, path: str, *, name_matters: bool = True,
               size: int | None = None) -> None:
        problem = self.rules.check(transfer, path, self.home, name_matters=name_matters,
                                   size=size)
        if problem is not None:
            raise Denied(f"broker: {problem}", op, path)

    def _request(self, kind: int, rid: int, pkt: memoryview) -> None:
        rules = self.rules
        if kind == WRITE:
            handle, pos = _string(pkt, 5)
            offset, length = _QI.unpack_from(pkt, pos)
            opened = self._handles.get(handle)
            if opened is None:
                raise Denied("broker: write to a handle the broker did not see opened",
                             "write", "")
            if rules.max_size is not None and offset + length > rules.max_size:
                problem = rules.size_refusal(opened.path, offset + length)
                if opened.fresh:
                    self._oversized.add(handle)
                raise Denied(f"broker: {problem}", "write", opened.path)
            return
        if kind == READ:
            handle, pos = _string(pkt, 5)
            opened = self._handles.get(handle)
            if opened is not None and rules.max_size is not None:
                self._reads[rid] = (opened, _U64.unpack_from(pkt, pos)[0])
            return
        if kind in _READ_ONLY:
            if kind == CLOSE:
                handle = _string(pkt, 5)[0]
                closed = self._handles.pop(handle, None)
                if handle in self._oversized:
                    self._oversized.discard(handle)
                    if closed is not None:
                        self._partial.remove_after_close(closed, rid)
            return
        if kind == REALPATH:
            path, _ = _path(pkt, 5)
            if not self._asked_home and path in (".", ""):
                self._asked_home, self._home_request = True, rid
            return
        if kind == OPEN:
            self._open(rid, pkt)
        elif kind in (REMOVE, RMDIR):
            self._check(Transfer.CHANGE, "remove", _path(pkt, 5)[0], name_matters=False)
        elif kind == MKDIR:
            self._check(Transfer.CHANGE, "mkdir", _path(pkt, 5)[0])
        elif kind == SETSTAT:
            path, pos = _path(pkt, 5)
            self._setstat("setstat", path, pkt, pos)
        elif kind == FSETSTAT:
            handle, pos = _string(pkt, 5)
            opened = self._handles.get(handle)
            if opened is None:
                raise Denied("broker: setstat on a handle the broker did not see opened",
                             "setstat", "")
            self._setstat("setstat", opened.path, pkt, pos)
        elif kind == RENAME:
            self._two_paths("rename", pkt, 5)
        elif kind == SYMLINK:
            first, pos = _path(pkt, 5)
            second, _ = _path(pkt, pos)
            link, target = (second, first) if self._target_first else (first, second)
            self._check(Transfer.CHANGE, "symlink", link)
            self._check(Transfer.CHANGE, "symlink", link_target(link, target))
        elif kind == LINK and self.version >= 6:
            self._two_paths("link", pkt, 5)
        elif kind == EXTENDED:
            self._extended(pkt)
        else:
            raise Denied(f"broker: SFTP request type {kind} is not allowed under the file"
                         " rules", f"type-{kind}", "")

    def _open(self, rid: int, pkt: memoryview) -> None:
        path, pos = _path(pkt, 5)
        if self.version >= 5:
            access, flags = _II.unpack_from(pkt, pos)
            writing = bool(access & _V5_WRITING) or (flags & 0x7) != _V5_OPEN_EXISTING
            reading = bool(access & 0x1)
            fresh = (flags & 0x7) in _V5_FRESH
            created_maybe = (flags & 0x7) == _V5_OPEN_OR_CREATE
        else:
            flags = _U32.unpack_from(pkt, pos)[0]
            writing, reading = bool(flags & _V3_WRITING), bool(flags & 0x1)
            fresh = bool(flags & _V3_FRESH)
            created_maybe = flags & (_V3_CREAT | _V3_APPEND) == _V3_CREAT
        if writing:
            self._check(Transfer.UPLOAD, "upload", path)
        if reading or not writing:
            self._check(Transfer.DOWNLOAD, "download", path)
        if writing and self._holds is not None:  # held at the broker until scanned
            self._holds.open(rid, path, bytes(pkt[5:]))
        opened = Opened(path, writing, bytes(_string(pkt, 5)[0]), writing and fresh)
        self._opens[rid] = opened
        if (writing and not fresh and created_maybe and self._holds is None
                and self.rules.max_size is not None):
            self._partial.probe_then_open(opened, pkt)

    # -- held uploads (sftp_hold.py) ------------------------------------------------------

    async def settle(self, relay: TransferRelay) -> None:
        if self._holds is not None:
            await self._holds.settle(relay)

    def close(self) -> None:
        if self._holds is not None:
            self._holds.close()

    def _check_write_size(self, path: str, end: int) -> None:
        if (problem := self.rules.size_refusal(path, end)) is not None:
            raise Denied(f"broker: {problem}", "write", path)

    def _held_setstat(self, path: str, pkt: memoryview, pos: int) -> None:
        self._setstat("setstat", path, pkt, pos)

    def _setstat(self, op: str, path: str, pkt: memoryview, pos: int) -> None:
        if self.version >= 4:
            pos += 1  # v4+ ATTRS: valid-attribute-flags, then the type byte, then the size
            flags = _U32.unpack_from(pkt, pos - 1)[0]
            size = _U64.unpack_from(pkt, pos + 4)[0] if flags & 0x1 else None
        else:
            size = _attr_size(pkt, pos)
        self._check(Transfer.CHANGE, op, path, name_matters=False, size=size)

    def _two_paths(self, op: str, pkt: memoryview, pos: int) -> None:
        old, pos = _path(pkt, pos)
        new, _ = _path(pkt, pos)
        self._check(Transfer.CHANGE, op, old)
        self._check(Transfer.CHANGE, op, new)

    def _extended(self, pkt: memoryview) -> None:
        raw, pos = _string(pkt, 5)
        name = decode_path(raw)
        if name in _EXT_READ_ONLY:
            return
        if name in ("posix-rename@openssh.com", "hardlink@openssh.com"):
            self._two_paths(name.split("@")[0], pkt, pos)
        elif name == "lsetstat@openssh.com":
            path, pos = _path(pkt, pos)
            self._setstat("setstat", path, pkt, pos)
        elif name == "copy-file":
            source, pos = _path(pkt, pos)
            target, _ = _path(pkt, pos)
            self._check(Transfer.DOWNLOAD, "copy", source)
            self._check(Transfer.UPLOAD, "copy", target)
        else:
            raise Denied(f"broker: the SFTP extension {name[:80]!r} is not allowed under the"
                         " file rules", "extension", "")

    # -- device -> technician ---------------------------------------------------------------

    def from_server(self, data: bytes) -> list[Piece]:
        return self.server.feed(data)

    def _server_need(self, head: memoryview) -> int:
        kind = head[4]
        if kind == VERSION:
            return 4 + int(_U32.unpack_from(head)[0])
        if len(head) < 9:
            return 9
        rid = _U32.unpack_from(head, 5)[0]
        if kind == DATA and rid in self._reads:
            return 13
        if (partial := self._partial.need(rid, 4 + int(_U32.unpack_from(head)[0]))) is not None:
            return partial
        if rid in self._opens or rid == self._home_request or (
                self._holds is not None and self._holds.waits_for(rid)):
            return 4 + int(_U32.unpack_from(head)[0])
        return 9

    def _server_decide(self, head: memoryview) -> bool:
        try:
            return self._reply(head[4:])
        except (struct.error, IndexError):
            return True  # a malformed reply is the client's to reject; its handle stays unknown

    def _reply(self, pkt: memoryview) -> bool:
        kind = pkt[0]
        if kind == VERSION:
            self.version = _U32.unpack_from(pkt, 1)[0]
            return True
        rid = _U32.unpack_from(pkt, 1)[0]
        if (verdict := self._partial.reply(rid, pkt)) is not None:
            return verdict  # a reply to the broker's own LSTAT/REMOVE, or a held CLOSE's
        if self._holds is not None and self._holds.reply(rid, pkt):
            return False  # a reply to the broker's own replay of a held upload
        opened = self._opens.pop(rid, None)
        if opened is not None and kind == HANDLE:
            self._handles[_string(pkt, 5)[0]] = opened
        elif rid == self._home_request:
            self._home_request = None
            if kind == NAME and _U32.unpack_from(pkt, 5)[0] >= 1:
                home = _path(pkt, 9)[0]
                self.home = home if home.startswith("/") else None
        read = self._reads.pop(rid, None)
        if read is not None and kind == DATA and self.rules.max_size is not None:
            file, offset = read
            end = offset + _U32.unpack_from(pkt, 5)[0]
            if end > self.rules.max_size:
                problem = self.rules.size_refusal(file.path, end)
                message = f"broker: {problem}"
                self.server.inject(status_packet(rid, FX_PERMISSION_DENIED, message))
                self._on_refused(message, "download", file.path, "file.denied")
                return False
        return True

