"""File transfer rules on a legacy scp channel (``scp -O``: an exec of ``scp -t``/``scp -f``).

The *source* (the technician for ``-t``, the device for ``-f``) sends records ``Cmode size
name`` / ``Dmode 0 name`` / ``E`` / ``T...``; the *sink* answers each with ``\\0`` or
``\\1message\\n``. The guard holds each record line until it has decided on it:

* a file or directory the rules refuse (name, path, size from the ``C`` header) is not passed
  on; the source gets ``\\1broker: <why>\\n`` as the answer, so it skips that file and goes on
  (OpenSSH's scp prints the line). In a download the technician's scp also gets the line as a
  record, which it prints. No byte of a refused file moves;
* file data passes through untouched (the size is the header's: scp sends exactly that many);
* with ``[scan]`` on, an upload's ``C`` record and data are taken by the broker (it answers
  the technician itself), spooled and scanned; only a clean file's header and data then go to
  the device, whose final answer goes back to the technician. An infected file is answered
  ``\1broker: ... the malware scanner found NAME\n`` and never reaches the device.

Where a legacy upload lands depends on the device (``scp -t DIR`` writes ``DIR/name``; a file
path is written itself): unless the command says the target is a directory (``-d``, a
trailing ``/``, ``.``), the file must be allowed at both places.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncssh

from broker.domain.file_rules import FileRules, Transfer
from broker.domain.scp_command import ScpCommand
from broker.recording.oplog import decode_path
from broker.scan.hold import Held, Scanner
from broker.ssh.sftp_frames import Piece

if TYPE_CHECKING:
    from broker.ssh.transfer_relay import TransferRelay

_MAX_LINE = 64 * 1024
_RECORD, _DATA, _TRAILER, _TRAILER_LINE = 0, 1, 2, 3

Refused = Callable[[str, str, str, str], None]  # (message, operation, path, audit event)


async def scp_target_is_dir(upstream: asyncssh.SSHClientConnection,
                            command: ScpCommand | None, rules: FileRules) -> bool | None:
    """For a legacy upload under ``paths`` rules whose target may be a file or a directory:
    ask the device (one SFTP stat) which it is. None when it cannot tell (both places must
    then be allowed)."""
    if command is None or not command.upload or not rules.paths or \
            target_is_known_dir(command):
        return None
    try:
        async with upstream.start_sftp_client() as client:
            return bool(await client.isdir(command.path))
    except (asyncssh.Error, OSError):
        return None


def direction_refusal(rules: FileRules, command: ScpCommand) -> str | None:
    """Why the whole scp command is refused (uploads or downloads denied), or None."""
    if command.upload and not rules.upload:
        return (f"broker: upload to {command.path!r} refused by policy: uploads are not"
                " allowed")
    if not command.upload and not rules.download:
        return (f"broker: download of {command.path!r} refused by policy: downloads are not"
                " allowed")
    return None


class ScpGuard:
    def __init__(self, rules: FileRules, command: ScpCommand, on_refused: Refused, *,
                 target_is_dir: bool | None = None, scanner: Scanner | None = None) -> None:
        """``target_is_dir``: whether the upload's target is a directory on the device, as
        the relay found out (None: unknown, so both places must be allowed)."""
        self.rules, self.command = rules, command
        self._on_refused = on_refused
        self._state = _RECORD
        self._line = bytearray()  # a record line (or error trailer) not complete yet
        self._remaining = 0
        self._answer_line = False  # inside a \1/\2 answer from the sink
        self._pending: tuple[str, object] | None = None  # record forwarded, answer awaited
        self._dirs: list[str] = []
        self._to_source: list[bytes] = []
        self._to_sink: list[bytes] = []
        self._target_is_dir = target_is_dir
        self._scanner = scanner if command.upload else None
        self._holding: Held | None = None  # an upload being spooled at the broker
        self._header = b""  # its C record, sent to the device once the file is clean
        self._scan_due: Held | None = None  # spooled whole: scan it before answering
        self._swallow: Held | None = None  # header sent: the device's answer is ours
        self._spool_due: Held | None = None  # the device took the header: send the data
        if target_is_dir is None and target_is_known_dir(command):
            self._target_is_dir = True

    # the technician is the source of an upload, the sink of a download
    def from_client(self, data: bytes) -> list[Piece]:
        return self._source(data) if self.command.upload else self._sink(data)

    def from_server(self, data: bytes) -> list[Piece]:
        return self._sink(data) if self.command.upload else self._source(data)

    def replies_to_client(self) -> list[bytes]:
        out = self._to_source if self.command.upload else self._to_sink
        replies = list(out)
        out.clear()
        return replies

    def replies_to_device(self) -> list[bytes]:
        out = self._to_sink if self.command.upload else self._to_source
        replies = list(out)
        out.clear()
        return replies

    # -- the sink's answers -----------------------------------------------------------------

    def _sink(self, data: bytes) -> list[Piece]:
        dropped = -1
        for index, byte in enumerate(data):
            if self._answer_line:
                self._answer_line = byte != 0x0A
                continue
            pending, self._pending = self._pending, None
            if self._swallow is not None:  # the answer to a held file's header
                held, self._swallow = self._swallow, None
                if byte == 0:
                    self._spool_due, dropped = held, index
                    continue
                held.discard()  # the device's refusal goes to the technician as it is
            if byte != 0:
                self._answer_line = True
            elif pending is not None and pending[0] == "C":
                size = int(pending[1])  # type: ignore[call-overload]
                self._state, self._remaining = (_DATA, size) if size else (_TRAILER, 0)
            elif pending is not None and pending[0] == "D":
                self._dirs.append(str(pending[1]))
        if dropped >= 0:
            return [data[:dropped], data[dropped + 1:]]
        return [data]

    # -- the source's records and data ------------------------------------------------------

    def _source(self, data: bytes) -> list[Piece]:
        pieces: list[Piece] = []
        mv = memoryview(data)
        pos, n = 0, len(data)
        run: int | None = None
        while pos < n:
            if self._state == _DATA:
                take = min(self._remaining, n - pos)
                if self._holding is not None:  # spooled at the broker, not passed on
                    if run is not None:
                        pieces.append(mv[run:pos])
                        run = None
                    self._holding.append(mv[pos:pos + take])
                else:
                    run = pos if run is None else run
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _TRAILER
                continue
            if self._state == _TRAILER and self._holding is not None:
                if run is not None:
                    pieces.append(mv[run:pos])
                    run = None
                held, self._holding = self._holding, None
                if data[pos] == 0:
                    self._scan_due = held
                    self._state = _RECORD
                else:  # the source could not read its file: nothing reaches the device
                    held.discard()
                    self._to_source.append(b"\0")
                    self._state = _TRAILER_LINE
                pos += 1
                continue
            if self._state == _TRAILER:
                run = pos if run is None else run
                self._state = _RECORD if data[pos] == 0 else _TRAILER_LINE
                pos += 1
                continue
            newline = data.find(b"\n", pos)
            end = n if newline < 0 else newline + 1
            if self._state == _TRAILER_LINE:
                run = pos if run is None else run
                pos = end
                if newline >= 0:
                    self._state = _RECORD
                continue
            if run is not None:
                pieces.append(mv[run:pos])
                run = None
            self._line += mv[pos:end]
            pos = end
            if newline < 0:
                if len(self._line) > _MAX_LINE:  # let the sink refuse the nonsense
                    pieces.append(bytes(self._line))
                    self._line.clear()
                continue
            line = bytes(self._line)
            self._line.clear()
            if self._record(line):
                pieces.append(line)
        if run is not None:
            pieces.append(mv[run:n])
        if len(pieces) == 1 and isinstance(pieces[0], memoryview) and len(pieces[0]) == n:
            return [data]
        return pieces

    def _record(self, line: bytes) -> bool:
        """Decide on one record line; True passes it on."""
        kind = line[:1]
        if kind == b"E":
            if self._dirs:
                self._dirs.pop()
            self._pending = ("E", None)
            return True
        if kind == b"T":
            self._pending = ("T", None)
            return True
        if kind not in (b"C", b"D"):
            return True
        try:
            _mode, size_text, raw_name = line[1:-1].split(b" ", 2)
            size = int(size_text)
        except ValueError:
            return True  # malformed: the sink refuses it
        name = decode_path(raw_name)
        problem = self._problem(kind == b"C", name, size)
        if problem is None and kind == b"C" and self._scanner is not None:
            self._holding = self._scanner.hold(self._landing(name)[0])
            self._header = line
            self._to_source.append(b"\0")  # the broker takes the file itself
            self._state, self._remaining = (_DATA, size) if size else (_TRAILER, 0)
            return False
        if problem is None:
            self._pending = ("C", size) if kind == b"C" else ("D", name)
            return True
        message = f"broker: {problem}"
        self._to_source.append(b"\x01" + message.encode("utf-8", "backslashreplace") + b"\n")
        if not self.command.upload:
            self._to_sink.append(b"\x01" + message.encode("utf-8", "backslashreplace") + b"\n")
        self._on_refused(message, "upload" if self.command.upload else "download", name,
                         "file.denied")
        return False

    # -- held uploads (malware scanning) ----------------------------------------------------

    async def settle(self, relay: TransferRelay) -> None:
        """Scan a file spooled whole, then pass it on or refuse it; send a clean file's
        data once the device took its header."""
        if self._scan_due is not None and self._scanner is not None:
            held, self._scan_due = self._scan_due, None
            judgement = await self._scanner.judge(held)
            if judgement.message is not None and judgement.event is not None:
                self._on_refused(judgement.message, "upload", held.name, judgement.event)
                await relay.audit()
            if not judgement.allowed:
                held.discard()
                assert judgement.message is not None
                relay.send_to_client(b"\x01" + judgement.message.encode(
                    "utf-8", "backslashreplace") + b"\n")
                return
            self._swallow = held
            relay.send_to_device(self._header)
        if self._spool_due is not None:
            held, self._spool_due = self._spool_due, None
            try:
                offset = 0
                while chunk := held.read_at(offset, 256 * 1024):
                    relay.send_to_device(chunk)
                    offset += len(chunk)
                    await relay.drain_device()
                relay.send_to_device(b"\0")
            finally:
                held.discard()

    def close(self) -> None:
        for held in (self._holding, self._scan_due, self._swallow, self._spool_due):
            if held is not None:
                held.discard()

    def _problem(self, is_file: bool, name: str, size: int) -> str | None:
        rules, command = self.rules, self.command
        if "/" in name or name in ("", ".", ".."):
            return f"{name!r} refused: not a plain file name"
        if is_file and (refusal := rules.size_refusal(name, size)) is not None:
            return refusal
        if not command.upload:
            if not is_file:
                return None  # the files inside are checked one by one
            parent = posixpath.dirname(command.path.rstrip("/")) or "."
            where = posixpath.join(parent, *self._dirs, name)
            return rules.check(Transfer.DOWNLOAD, where)
        transfer = Transfer.UPLOAD if is_file else Transfer.CHANGE
        for where in self._landing(name):
            problem = rules.check(transfer, where)
            if problem is not None:
                return problem
        return None

    def _landing(self, name: str) -> list[str]:
        """Where the device may write ``name``: every place must be allowed."""
        path, dirs, is_dir = self.command.path, self._dirs, self._target_is_dir
        inside = posixpath.join(path, *dirs, name)
        # not a directory: the file is written as the path itself; a recursive copy's top
        # directory is created under that path's name
        instead = posixpath.join(path, *dirs[1:], name) if dirs else path
        if is_dir is None:
            return [inside, instead]
        return [inside if is_dir else instead]


def target_is_known_dir(command: ScpCommand) -> bool:
    """Whether the command itself says its target is a directory (``-d``, a trailing
    ``/``, ``.``/``..``)."""
    path = command.path
    return command.must_be_dir or path.endswith("/") or posixpath.basename(path) in (".", "..")
