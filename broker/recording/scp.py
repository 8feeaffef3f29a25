"""Passive recorder for the legacy scp protocol (``scp -O``: an exec of ``scp -t``/``scp -f``).

``scp -t PATH`` makes the device the *sink* (an upload: records and file data flow from the
technician); ``scp -f PATH`` makes it the *source* (a download: they flow to the technician).
The source sends lines ``Cmmmm size name`` (a file, followed by ``size`` bytes and one status
byte), ``Dmmmm 0 name`` (enter a directory), ``E`` (leave it), ``Tmtime 0 atime 0`` (times of the
next C/D) and ``\\1msg``/``\\2msg`` (warning/fatal error). The sink answers each record, and
each file's data, with ``\\0`` (ok), ``\\1msg\\n`` or ``\\2msg\\n``; the source sends nothing
more until it has that answer, so the recorder pairs them the same way, in any chunking.

Log lines (``t`` = seconds since the recorder was created)::

    {"t", "op": "command", "command", "requested"?, "direction": "upload"|"download",
          "remote": [path], "recursive", "preserve"}   # command: what the device ran (built
                                                       # by the broker); requested: as sent
    {"t", "op": "upload"|"download", "path", "mode", "size", "sha256", "mtime"?, "atime"?,
          "result"}                            # path: the directories entered, then the name
    {"t", "op": "mkdir", "path", "mode", "result"}          # a D record (a directory sent)
    {"t", "op": "error", "from": "client"|"server", "message", "fatal"}  # outside any file
    {"t", "op": "protocol-error", "from", "reason"}
    {"t", "op": "exit", "status"}

``result`` is ``"ok"``, ``"error: <message>"`` (``\\1``), ``"fatal: <message>"`` (``\\2``)
or ``"incomplete"`` (the channel closed mid-file: ``sha256`` is null and ``bytes`` says how
many arrived). ``path`` is relative to the ``remote`` path of the command line (the device
decides whether that names a directory or the file itself).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from broker.domain.scp_command import ScpCommand, build, parse_or_none

from .flusher import Flusher
from .oplog import OpLog, decode_path

__all__ = ["SCPCommand", "SCPRecorder", "is_scp_command", "parse_scp_command"]

SCPCommand = ScpCommand

_MAX_LINE = 64 * 1024
#: Source bytes held while the answer to the previous record has not been seen yet.
_MAX_UNACKED = 8 * 1024 * 1024

_RECORD, _DATA, _TRAILER = 0, 1, 2


def parse_scp_command(command: str) -> ScpCommand | None:
    """The strict parse (:mod:`broker.domain.scp_command`), or None when not plain scp."""
    return parse_or_none(command)


def is_scp_command(command: str) -> bool:
    return parse_or_none(command) is not None


class _ProtocolError(Exception):
    pass


class _File:
    __slots__ = ("received", "record", "remaining", "sha", "source_error")

    def __init__(self, record: dict[str, object], size: int) -> None:
        self.record = record
        self.remaining = size
        self.received = 0
        self.sha = hashlib.sha256()
        self.source_error: str | None = None


# What the source waits for an answer to: ("initial"|"T"|"E", None), ("C"|"data", _File),
# ("D", record).
_Awaited = tuple[str, object]
_Ack = tuple[int, str]  # (0 ok | 1 error | 2 fatal, message)


def _result(ack: _Ack) -> str:
    kind, message = ack
    return "ok" if kind == 0 else f"{'error' if kind == 1 else 'fatal'}: {message}"


class SCPRecorder:
    """Records one legacy scp exec channel from copies of its two byte streams."""

    def __init__(self, path: Path, command: ScpCommand | str, *, requested: str | None = None,
                 flusher: Flusher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = OpLog(path, flusher=flusher, clock=clock)
        self._command = parse_or_none(command) if isinstance(command, str) else command
        self._failed = False
        self._src = bytearray()  # source bytes not parsed yet
        self._sink = bytearray()  # a partial answer line from the sink
        self._state = _RECORD
        self._file: _File | None = None
        self._awaiting: _Awaited | None = ("initial", None)
        self._acks: deque[_Ack] = deque()
        self._dirs: list[str] = []
        self._times: dict[str, object] = {}
        shown = build(self._command) if self._command is not None else command
        record: dict[str, object] = {"op": "command", "command": shown}
        if requested is not None and requested != shown:
            record["requested"] = requested  # the technician's text; the device ran "command"
        if self._command is None:
            self._failed = True
            record["result"] = "not an scp -t/-f command"
        else:
            record.update(direction="upload" if self._command.upload else "download",
                          remote=[self._command.path], recursive=self._command.recursive,
                          preserve=self._command.preserve)
        self._log.write(record)

    @property
    def path(self) -> Path:
        return self._log.path

    @property
    def operations(self) -> list[dict[str, object]]:
        return list(self._log.records)

    @property
    def failed(self) -> bool:
        return self._failed

    def from_client(self, data: bytes | bytearray | memoryview) -> None:
        """Technician -> device bytes (records and data for an upload, answers otherwise)."""
        if self._command is not None:
            self._feed(data, self._command.upload)

    def from_server(self, data: bytes | bytearray | memoryview) -> None:
        """Device -> technician bytes."""
        if self._command is not None:
            self._feed(data, not self._command.upload)

    def close(self, exit_status: int | None = None) -> None:
        if self._log.closed:
            return
        awaited = self._awaiting[0] if self._awaiting is not None else None
        file = self._file
        if awaited in ("C", "data"):
            file = self._awaiting[1]  # type: ignore[index,assignment]
        if file is not None:
            # "data": every byte arrived but the device never confirmed the file.
            digest = file.sha.hexdigest() if awaited == "data" else None
            self._log.write({**file.record, "bytes": file.received, "sha256": digest,
                             "result": "incomplete"})
        self._failed = True
        self._log.write({"op": "exit", "status": exit_status})
        self._log.close()

    # -- input -----------------------------------------------------------------------------

    def _feed(self, data: bytes | bytearray | memoryview, from_source: bool) -> None:
        if self._failed:
            return
        try:
            if from_source:
                self._source_bytes(data)
            else:
                self._sink_bytes(data)
        except _ProtocolError as exc:
            self._protocol_error(from_source, str(exc))
        except Exception as exc:
            self._protocol_error(from_source, f"{type(exc).__name__}: {exc}")

    def _side(self, from_source: bool) -> str:
        assert self._command is not None
        return "client" if from_source == self._command.upload else "server"

    def _protocol_error(self, from_source: bool, reason: str) -> None:
        self._failed = True
        self._src = bytearray()
        self._sink = bytearray()
        self._log.write({"op": "protocol-error", "from": self._side(from_source),
                         "reason": reason})

    def _source_bytes(self, data: bytes | bytearray | memoryview) -> None:
        if self._src:
            self._src += data
            self._run_buffer()
        else:  # parse straight from the chunk: file data is hashed without a copy
            raw = data if isinstance(data, bytes) else bytes(data)
            with memoryview(raw) as mv:
                used = self._parse(raw, mv)
                if used < len(raw):
                    self._src += mv[used:]
        if len(self._src) > _MAX_UNACKED:
            raise _ProtocolError("the source sent more than 8 MiB without an answer")

    def _run_buffer(self) -> None:
        if not self._src or self._awaiting is not None:
            return
        with memoryview(self._src) as mv:
            used = self._parse(self._src, mv)
        del self._src[:used]

    def _parse(self, raw: bytes | bytearray, mv: memoryview) -> int:
        """Parse source bytes until more are needed or an answer must come first."""
        pos, end = 0, len(raw)
        while pos < end and self._awaiting is None:
            file = self._file
            if self._state == _DATA and file is not None:
                take = min(file.remaining, end - pos)
                file.sha.update(mv[pos:pos + take])
                file.received += take
                file.remaining -= take
                pos += take
                if not file.remaining:
                    self._state = _TRAILER
            elif self._state == _TRAILER and file is not None:
                if raw[pos] == 0:
                    pos += 1
                else:
                    newline = raw.find(b"\n", pos, pos + _MAX_LINE)
                    if newline < 0:
                        self._check_partial(end - pos)
                        break
                    file.source_error = _result((min(raw[pos], 2),
                                                 decode_path(raw[pos + 1:newline])))
                    pos = newline + 1
                self._state = _RECORD
                self._file = None
                self._awaiting = ("data", file)
            else:
                newline = raw.find(b"\n", pos, pos + _MAX_LINE)
                if newline < 0:
                    self._check_partial(end - pos)
                    break
                self._record(bytes(raw[pos:newline]))
                pos = newline + 1
        return pos

    def _check_partial(self, length: int) -> None:
        if length >= _MAX_LINE:
            raise _ProtocolError(f"a control line longer than {_MAX_LINE} bytes")

    def _record(self, line: bytes) -> None:
        kind = line[:1]
        if kind in (b"C", b"D"):
            try:
                mode, size, name = line[1:].split(b" ", 2)
                mode_value, size_value = int(mode, 8), int(size)
            except ValueError:
                raise _ProtocolError(f"malformed record {decode_path(line[:200])!r}") from None
            if size_value < 0 or mode_value < 0:
                raise _ProtocolError(f"malformed record {decode_path(line[:200])!r}")
            assert self._command is not None
            record: dict[str, object] = {
                "op": ("upload" if self._command.upload else "download") if kind == b"C"
                else "mkdir",
                "path": f"{self._dirs[-1]}/{decode_path(name)}" if self._dirs
                else decode_path(name),
                "mode": decode_path(mode),
            }
            if kind == b"C":
                record["size"] = size_value
            record.update(self._times)
            self._times = {}
            if kind == b"C":
                self._awaiting = ("C", _File(record, size_value))
            else:
                self._awaiting = ("D", record)
        elif kind == b"E":
            self._awaiting = ("E", None)
        elif kind == b"T":
            try:
                mtime, _, atime, _ = (int(x) for x in line[1:].split(b" "))
            except ValueError:
                raise _ProtocolError(f"malformed record {decode_path(line[:200])!r}") from None
            self._times = {"mtime": mtime, "atime": atime}
            self._awaiting = ("T", None)
        elif kind in (b"\x01", b"\x02"):
            self._log.write({"op": "error", "from": self._side(True),
                             "message": decode_path(line[1:]), "fatal": kind == b"\x02"})
        else:
            raise _ProtocolError(f"unknown record {decode_path(line[:200])!r}")

    def _sink_bytes(self, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        pos = 0
        while pos < len(raw):
            if not self._sink:
                if raw[pos] == 0:
                    self._acks.append((0, ""))
                    pos += 1
                    continue
                self._sink.append(raw[pos])
                pos += 1
            newline = raw.find(b"\n", pos)
            if newline < 0:
                self._sink += raw[pos:]
                self._check_partial(len(self._sink))
                break
            self._sink += raw[pos:newline]
            self._check_partial(len(self._sink))
            first, message = self._sink[0], decode_path(self._sink[1:])
            if first not in (1, 2):  # OpenSSH treats any other byte as a fatal message
                first, message = 2, decode_path(self._sink)
            self._acks.append((first, message))
            self._sink.clear()
            pos = newline + 1
        self._match()

    # -- pairing ---------------------------------------------------------------------------

    def _match(self) -> None:
        while self._awaiting is not None and self._acks:
            awaited, self._awaiting = self._awaiting, None
            self._answered(awaited, self._acks.popleft())
            self._run_buffer()

    def _answered(self, awaited: _Awaited, ack: _Ack) -> None:
        what, item = awaited
        if what == "C":
            assert isinstance(item, _File)
            if ack[0] == 0:
                self._file = item
                self._state = _DATA if item.remaining else _TRAILER
            else:
                self._log.write({**item.record, "sha256": None, "result": _result(ack)})
        elif what == "data":
            assert isinstance(item, _File)
            result = item.source_error or _result(ack)
            self._log.write({**item.record, "sha256": item.sha.hexdigest(), "result": result})
        elif what == "D":
            assert isinstance(item, dict)
            if ack[0] == 0:
                self._dirs.append(str(item["path"]))
            self._log.write({**item, "result": _result(ack)})
        elif ack[0] == 0:
            if what == "E" and self._dirs:
                self._dirs.pop()
        else:
            self._log.write({"op": "error", "from": self._side(False), "message": ack[1],
                             "fatal": ack[0] == 2})
