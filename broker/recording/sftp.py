"""Passive SFTP recorder: parses copies of both byte streams of a relayed ``sftp`` subsystem.

The relay copies SFTP bytes unchanged between technician and device; it hands a copy of every
chunk to :meth:`SFTPRecorder.from_client` / :meth:`SFTPRecorder.from_server` (in any chunking).
The recorder reassembles packets (SFTP v3, and the few request layouts that differ in v4-v6),
pairs requests with replies by request id and writes one JSON line per completed operation.
It never raises into the relay: input it cannot parse produces one ``protocol-error`` line and
the recorder stops parsing (the relay keeps passing bytes through).

Log lines (``t`` = seconds since the recorder was created, at the moment the reply was seen)::

    {"t", "op": "version", "version", "client_version", "extensions": [names]}
    {"t", "op": "remove"|"mkdir"|"rmdir"|"setstat"|"lsetstat@openssh.com"|"stat"|"lstat"|
                "realpath"|"readlink"|"statvfs@openssh.com"|..., "path", "result"}
    {"t", "op": "rename"|"posix-rename@openssh.com"|"hardlink@openssh.com"|"symlink"|"link",
          "path", "target", "result"}                # symlink: path = the link, target = where
                                                     # it points; rename/hardlink: from -> to
    {"t", "op": "download"|"upload"|"open", "path", "mode", "bytes_read", "bytes_written",
          "sha256_read"?, "sha256_written"?, "hash"?: "non-sequential", "opened", "result"}
    {"t", "op": "opendir", "path", "entries", "opened", "result"}   # one line per listing
    {"t", "op": "open"|"opendir", "path", "mode"?, "result": "<status>: <message>"}  # refused
    {"t", "op": "protocol-error", "from": "client"|"server", "reason", "stream_offset"}

``result`` is ``"ok"``, ``"incomplete"`` (still open or unanswered when the recorder closed) or
``"<status name>: <server message>"`` such as ``"no_such_file: No such file"``. Individual
READ/WRITE/READDIR/FSTAT requests are not logged: a file handle gets one line when it is closed,
with the bytes moved each way and the SHA-256 of that content in file-offset order (``mode`` is
the OPEN pflags; v5+ sessions also carry ``access``). Replies may arrive out of order; chunks
are held until they are contiguous, up to :attr:`SFTPRecorder.max_pending_hash` bytes per
handle, after which (or if a gap never fills) the hash is ``null`` with
``"hash": "non-sequential"``. ``read_offset``/``write_offset`` appear when a transfer did not
start at offset 0 (a resumed transfer); the hash then covers the bytes from that offset on.
Paths are decoded as UTF-8 with ``\\xNN`` escapes for other bytes.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from pathlib import Path

from .flusher import Flusher
from .oplog import OpLog, decode_path
from .sftp_handles import _Dir, _File
from .sftp_wire import (
    _EXT_HANDLE,
    _EXT_PATH,
    _EXT_TWO_PATHS,
    _II,
    _PATH_OPS,
    _QI,
    _REPLY_TYPES,
    _RESOLVING,
    _U32,
    _U64,
    ATTRS,
    BLOCK,
    CLOSE,
    DATA,
    DEFAULT_MAX_PACKET,
    EXTENDED,
    EXTENDED_REPLY,
    FSETSTAT,
    FSTAT,
    FX_EOF,
    FX_OK,
    HANDLE,
    HARD_MAX_PACKET,
    INIT,
    LINK,
    MKDIR,
    NAME,
    OPEN,
    OPENDIR,
    READ,
    READDIR,
    RENAME,
    SETSTAT,
    STATUS,
    SYMLINK,
    UNBLOCK,
    VERSION,
    WRITE,
    _attrs_v3,
    _path,
    _ProtocolError,
    _status,
    _string,
)

__all__ = ["SFTPRecorder"]

_MAX_PENDING_REQUESTS = 65536
_MAX_HANDLES = 65536
_MAX_ORPHANS = 256
_MAX_ORPHAN_BYTES = 16 * 1024 * 1024

# A pending request: (packet type, logged record or handle state or handle bytes, extra).
_Pending = tuple[int, object, object]


class SFTPRecorder:
    """Records one SFTP session from copies of its two byte streams (see the module doc).

    Feed each chunk before forwarding it (so a request is seen before the reply its peer
    could send). A reply fed before its request is held and paired when the request arrives
    (up to 256 of them), so a relay whose two pumps race loses nothing.
    """

    #: Out-of-order bytes held per handle and direction before giving up on the hash.
    max_pending_hash = 64 * 1024 * 1024

    def __init__(self, path: Path, *, flusher: Flusher | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 symlink_target_first: bool = True) -> None:
        """``symlink_target_first``: OpenSSH's sftp-server (and most servers) take the SYMLINK
        arguments as (target, link), the reverse of the draft; pass False for a server that
        follows the draft (the relay knows the device's SSH version string)."""
        self._log = OpLog(path, flusher=flusher, clock=clock)
        self._symlink_target_first = symlink_target_first
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self._fed = [0, 0]  # bytes fed per direction: client, server
        self._failed = False
        self._client_version: int | None = None
        self._version: int | None = None
        self._max_packet = DEFAULT_MAX_PACKET
        self._pending: dict[int, _Pending] = {}
        self._handles: dict[bytes, _File | _Dir] = {}
        self._orphans: dict[int, bytes] = {}
        self._orphan_bytes = 0

    @property
    def path(self) -> Path:
        return self._log.path

    @property
    def operations(self) -> list[dict[str, object]]:
        """The logged lines (the most recent 10,000), as written."""
        return list(self._log.records)

    @property
    def failed(self) -> bool:
        """True once a protocol error stopped the parsing."""
        return self._failed

    def from_client(self, data: bytes | bytearray | memoryview) -> None:
        """Technician -> device bytes."""
        self._feed(data, True)

    def from_server(self, data: bytes | bytearray | memoryview) -> None:
        """Device -> technician bytes."""
        self._feed(data, False)

    def close(self) -> None:
        """Log unanswered operations and still-open handles as ``incomplete``; flush, close."""
        if self._log.closed:
            return
        self._failed = True
        for kind, info, _ in self._pending.values():
            if kind not in (READ, WRITE, READDIR, FSTAT, CLOSE) and isinstance(info, dict):
                self._log.write({**info, "result": "incomplete"})
        for state in self._handles.values():
            self._log.write(state.summary("incomplete"))
        self._pending.clear()
        self._handles.clear()
        self._orphans.clear()
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self._log.close()

    # -- framing ---------------------------------------------------------------------------

    def _feed(self, data: bytes | bytearray | memoryview, client: bool) -> None:
        if self._failed:
            return
        buf = self._cbuf if client else self._sbuf
        handler = self._client_packet if client else self._server_packet
        direction = 0 if client else 1
        fed = self._fed[direction]
        pos = 0
        try:
            mv = memoryview(data).cast("B")
            n = len(mv)
            self._fed[direction] = fed + n
            if buf:
                if len(buf) < 4:
                    pos = min(4 - len(buf), n)
                    buf += mv[:pos]
                    if len(buf) < 4:
                        return
                total = 4 + self._check_length(_U32.unpack_from(buf)[0])
                take = min(total - len(buf), n - pos)
                buf += mv[pos:pos + take]
                pos += take
                if len(buf) < total:
                    return
                with memoryview(buf) as whole:
                    packet = whole[4:total]
                    try:
                        handler(packet)
                    finally:
                        packet.release()
                del buf[:total]  # empties it but keeps the allocation for the next packet
            check = self._check_length
            unpack = _U32.unpack_from
            while n - pos >= 4:
                end = pos + 4 + check(unpack(mv, pos)[0])
                if end > n:
                    break
                handler(mv[pos + 4:end])
                pos = end
            if pos < n:
                buf += mv[pos:]
        except _ProtocolError as exc:
            self._protocol_error(client, str(exc), fed + pos)
        except Exception as exc:
            self._protocol_error(client, f"malformed packet ({type(exc).__name__}: {exc})",
                                 fed + pos)

    def _check_length(self, length: int) -> int:
        if length < 5:
            raise _ProtocolError(f"packet length {length} is too short")
        if length > self._max_packet:
            raise _ProtocolError(f"packet length {length} exceeds {self._max_packet}")
        return length

    def _protocol_error(self, client: bool, reason: str, offset: int) -> None:
        self._failed = True
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self._orphans.clear()
        self._log.write({"op": "protocol-error", "from": "client" if client else "server",
                         "reason": reason, "stream_offset": offset})

    # -- requests --------------------------------------------------------------------------

    def _client_packet(self, pkt: memoryview) -> None:
        kind = pkt[0]
        if kind == WRITE and self._client_version is not None:  # the hot path of an upload
            rid, hlen = _II.unpack_from(pkt, 1)
            hend = 9 + hlen
            offset, dlen = _QI.unpack_from(pkt, hend)
            dstart = hend + 12
            if dstart + dlen > len(pkt):
                raise _ProtocolError("WRITE data runs past the end of the packet")
            state = self._handles.get(bytes(pkt[9:hend]))
            if isinstance(state, _File):
                state.writes += 1
                state.bytes_written += dlen
                state.write_hash.add(offset, pkt[dstart:dstart + dlen])
            self._request(rid, (WRITE, state, None))
            return
        if self._client_version is None:
            if kind != INIT:
                raise _ProtocolError(f"expected INIT from the client, got packet type {kind}")
            self._client_version = _U32.unpack_from(pkt, 1)[0]
            return
        rid = _U32.unpack_from(pkt, 1)[0]
        version = self._version or 3
        if kind == READ:
            handle, pos = _string(pkt, 5)
            offset = _U64.unpack_from(pkt, pos)[0]
            state = self._handles.get(bytes(handle))
            if isinstance(state, _File):
                state.reads += 1
                state.read_hash.begin(offset)
            self._request(rid, (READ, state, offset))
        elif kind in (READDIR, FSTAT):
            handle, _ = _string(pkt, 5)
            self._request(rid, (kind, self._handles.get(bytes(handle)), None))
        elif kind == CLOSE:
            handle, _ = _string(pkt, 5)
            self._request(rid, (CLOSE, bytes(handle), None))
        elif kind == OPEN:
            path, pos = _path(pkt, 5)
            record: dict[str, object] = {"op": "open", "path": path}
            if version >= 5:
                access, flags = _II.unpack_from(pkt, pos)
                record["mode"] = flags
                record["access"] = access
            else:
                flags = _U32.unpack_from(pkt, pos)[0]
                access = flags & 0x7
                record["mode"] = flags
            self._request(rid, (OPEN, record, access))
        elif kind == OPENDIR:
            path, _ = _path(pkt, 5)
            self._request(rid, (OPENDIR, {"op": "opendir", "path": path}, None))
        elif kind in _PATH_OPS:
            path, pos = _path(pkt, 5)
            record = {"op": _PATH_OPS[kind], "path": path}
            if kind in (SETSTAT, MKDIR) and version == 3:
                record.update(_attrs_v3(pkt, pos))
            self._request(rid, (kind, record, None))
        elif kind == RENAME:
            path, pos = _path(pkt, 5)
            target, _ = _path(pkt, pos)
            self._request(rid, (kind, {"op": "rename", "path": path, "target": target}, None))
        elif kind == SYMLINK:
            first, pos = _path(pkt, 5)
            second, _ = _path(pkt, pos)
            link, target = (second, first) if self._symlink_target_first else (first, second)
            self._request(rid, (kind, {"op": "symlink", "path": link, "target": target}, None))
        elif kind == LINK and version >= 6:
            link, pos = _path(pkt, 5)
            target, pos = _path(pkt, pos)
            op = "symlink" if pos < len(pkt) and pkt[pos] else "link"
            self._request(rid, (kind, {"op": op, "path": link, "target": target}, None))
        elif kind in (FSETSTAT, BLOCK, UNBLOCK) and (kind == FSETSTAT or version >= 6):
            handle, pos = _string(pkt, 5)
            op = {FSETSTAT: "fsetstat", BLOCK: "block", UNBLOCK: "unblock"}[kind]
            record = {"op": op, "path": self._handle_path(handle)}
            if kind == FSETSTAT and version == 3:
                record.update(_attrs_v3(pkt, pos))
            self._request(rid, (kind, record, None))
        elif kind == EXTENDED:
            self._extended(rid, pkt)
        else:
            raise _ProtocolError(f"packet type {kind} is not an SFTP v{version} request")

    def _extended(self, rid: int, pkt: memoryview) -> None:
        raw, pos = _string(pkt, 5)
        name = decode_path(raw)
        record: dict[str, object] = {"op": name}
        if name in _EXT_PATH:
            record["path"], pos = _path(pkt, pos)
            if name == "lsetstat@openssh.com" and self._version == 3:
                record.update(_attrs_v3(pkt, pos))
        elif name in _EXT_TWO_PATHS:
            record["path"], pos = _path(pkt, pos)
            record["target"], pos = _path(pkt, pos)
        elif name in _EXT_HANDLE:
            handle, pos = _string(pkt, pos)
            record["path"] = self._handle_path(handle)
        elif name == "copy-data":
            source, pos = _string(pkt, pos)
            read_offset, length = struct.unpack_from(">QQ", pkt, pos)
            dest, pos = _string(pkt, pos + 16)
            record.update(path=self._handle_path(source), target=self._handle_path(dest),
                          offset=read_offset, length=length,
                          target_offset=_U64.unpack_from(pkt, pos)[0])
        elif name == "home-directory":
            record["user"], pos = _path(pkt, pos)
        elif name == "version-select":
            record["version"], pos = _path(pkt, pos)
        self._request(rid, (EXTENDED, record, name))

    def _handle_path(self, handle: memoryview) -> object:
        state = self._handles.get(bytes(handle))
        return state.path if state is not None else None

    def _request(self, rid: int, pending: _Pending) -> None:
        if len(self._pending) >= _MAX_PENDING_REQUESTS and rid not in self._pending:
            raise _ProtocolError(f"more than {_MAX_PENDING_REQUESTS} requests unanswered")
        self._pending[rid] = pending
        if self._orphans and rid in self._orphans:
            # The reply was fed before its request (the relay fed the streams out of order).
            orphan = self._orphans.pop(rid)
            self._orphan_bytes -= len(orphan)
            self._server_packet(memoryview(orphan))

    # -- replies ---------------------------------------------------------------------------

    def _server_packet(self, pkt: memoryview) -> None:
        kind = pkt[0]
        if self._version is None:
            if kind != VERSION:
                raise _ProtocolError(f"expected VERSION from the server, got packet type {kind}")
            self._server_version(pkt)
            return
        if kind not in _REPLY_TYPES:
            raise _ProtocolError(f"packet type {kind} is not an SFTP reply")
        rid = _U32.unpack_from(pkt, 1)[0]
        pending = self._pending.pop(rid, None)
        if pending is None:
            self._orphan(rid, pkt)
            return
        request, info, extra = pending
        if request == READ:  # the hot path of a download
            if kind == DATA and isinstance(info, _File):
                dlen = _U32.unpack_from(pkt, 5)[0]
                if 9 + dlen > len(pkt):
                    raise _ProtocolError("DATA runs past the end of the packet")
                info.bytes_read += dlen
                info.read_hash.add(extra, pkt[9:9 + dlen])  # type: ignore[arg-type]
            elif kind == STATUS and isinstance(info, _File):
                code, result = _status(pkt)
                if code not in (FX_OK, FX_EOF) and info.error is None:
                    info.error = result
        elif request in (WRITE, READDIR):
            if kind == STATUS and isinstance(info, _File | _Dir):
                code, result = _status(pkt)
                if code not in (FX_OK, FX_EOF) and info.error is None:
                    info.error = result
            elif kind == NAME and isinstance(info, _Dir):
                info.entries += _U32.unpack_from(pkt, 5)[0]
        elif request == FSTAT:
            pass
        elif request == CLOSE:
            assert isinstance(info, bytes)
            state = self._handles.pop(info, None)
            result = _status(pkt)[1] if kind == STATUS else _unexpected(kind)
            if state is not None:
                self._log.write(state.summary(result))
            else:
                self._log.write({"op": "close", "handle": info.hex(), "result": result})
        elif request in (OPEN, OPENDIR):
            assert isinstance(info, dict)
            if kind == HANDLE:
                handle = bytes(_string(pkt, 5)[0])
                old = self._handles.pop(handle, None)
                if old is not None:  # reused without a CLOSE we saw
                    self._log.write(old.summary("incomplete"))
                if len(self._handles) >= _MAX_HANDLES:
                    raise _ProtocolError(f"more than {_MAX_HANDLES} handles open")
                opened = self._log.elapsed()
                self._handles[handle] = (
                    _File(info, extra, opened, self.max_pending_hash)  # type: ignore[arg-type]
                    if request == OPEN else _Dir(info, opened))
            else:
                self._log.write({**info, "result": _status(pkt)[1] if kind == STATUS
                                 else _unexpected(kind)})
        else:
            assert isinstance(info, dict)
            self._log.write(self._completed(info, kind, pkt, extra))

    def _completed(self, record: dict[str, object], kind: int, pkt: memoryview,
                   extension: object) -> dict[str, object]:
        if kind == STATUS:
            return {**record, "result": _status(pkt)[1]}
        if kind == NAME and record["op"] in _RESOLVING:
            count = _U32.unpack_from(pkt, 5)[0]
            if count:
                record = {**record, "resolved": _path(pkt, 9)[0]}
        elif kind == EXTENDED_REPLY:
            if extension == "limits@openssh.com":
                self._adopt_limits(pkt)
        elif kind not in (NAME, ATTRS):
            return {**record, "result": _unexpected(kind)}
        if extension == "version-select":
            with contextlib.suppress(ValueError):
                self._version = int(str(record.get("version")))
        return {**record, "result": "ok"}

    def _server_version(self, pkt: memoryview) -> None:
        version = _U32.unpack_from(pkt, 1)[0]
        extensions: list[str] = []
        pos = 5
        while pos < len(pkt):
            name, pos = _string(pkt, pos)
            _, pos = _string(pkt, pos)
            extensions.append(decode_path(name))
        self._version = version
        self._log.write({"op": "version", "version": version,
                         "client_version": self._client_version, "extensions": extensions})

    def _adopt_limits(self, pkt: memoryview) -> None:
        packet, read, write, _ = struct.unpack_from(">QQQQ", pkt, 5)
        wanted = max(packet, read + 1024 if read else 0, write + 1024 if write else 0)
        self._max_packet = max(self._max_packet, min(wanted, HARD_MAX_PACKET))

    def _orphan(self, rid: int, pkt: memoryview) -> None:
        if len(self._orphans) >= _MAX_ORPHANS or self._orphan_bytes + len(pkt) > \
                _MAX_ORPHAN_BYTES:
            raise _ProtocolError("too many replies to requests never seen")
        self._orphans[rid] = bytes(pkt)
        self._orphan_bytes += len(pkt)


def _unexpected(kind: int) -> str:
    return f"unexpected reply type {kind}"
