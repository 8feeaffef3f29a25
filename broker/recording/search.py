"""Searching recorded sessions for a text: terminal output and input, exec logs, file transfers.

Files are read one line at a time. Terminal and exec streams are searched as one running text
per stream (typed input arrives a character per event, so ``reboot`` spans six events); each
hit carries the time offset, within its channel, of the event holding its first character.
SFTP and scp logs are searched per operation, in the paths (and commands, messages) they name.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import Kind, recorded_files
from .reader import SessionInfo, iter_sessions

CONTEXT = 30  # characters of context on each side of a hit
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_TRANSFER_FIELDS = ("path", "target", "remote", "command", "message")


@dataclass(frozen=True)
class Hit:
    session: str
    technician: str | None
    device: str | None
    file: str
    stream: str  # output | input | command | stdout | stderr | stdin | transfer
    offset: float  # seconds since the channel opened
    snippet: str

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "technician": self.technician,
                "device": self.device, "file": self.file, "stream": self.stream,
                "offset": self.offset, "snippet": self.snippet}


def format_offset(seconds: float) -> str:
    tenths = max(0, round(seconds * 10))
    minutes, rest = divmod(tenths, 600)
    return f"+{minutes:02d}:{rest // 10:02d}.{rest % 10}"


def clean_snippet(text: str) -> str:
    """A one-line, escape-free rendering of some recorded text."""
    return _CONTROL.sub(" ", _ANSI.sub("", text)).strip()


class _Stream:
    """A running text fed event by event; finds every (non-overlapping) occurrence."""

    def __init__(self, pattern: re.Pattern[str], width: int) -> None:
        self._pattern = pattern
        self._keep = width - 1 + CONTEXT  # enough to find a hit spanning events, with context
        self._buf = ""
        self._base = 0  # absolute position of _buf[0]
        self._next = 0  # absolute position where the next search starts
        self._positions: list[int] = []  # absolute start of each event still in _buf
        self._times: list[float] = []

    def feed(self, t: float, data: str) -> Iterator[tuple[float, str]]:
        if not data:
            return
        self._positions.append(self._base + len(self._buf))
        self._times.append(t)
        self._buf += data
        for match in self._pattern.finditer(self._buf, self._next - self._base):
            start = self._base + match.start()
            index = bisect.bisect_right(self._positions, start) - 1
            snippet = self._buf[max(0, match.start() - CONTEXT):match.end() + CONTEXT]
            self._next = self._base + match.end()
            yield self._times[max(index, 0)], clean_snippet(snippet)
        self._trim()

    def _trim(self) -> None:
        cut = len(self._buf) - self._keep
        if cut <= 0:
            return
        self._buf = self._buf[cut:]
        self._base += cut
        self._next = max(self._next, self._base)
        # Keep the event that holds the new first character.
        first = max(bisect.bisect_right(self._positions, self._base) - 1, 0)
        del self._positions[:first], self._times[:first]


def _lines(path: Path) -> Iterator[Any]:
    """The JSON values of a file's lines; unreadable lines (a cut-short last line) skipped."""
    with path.open("rb") as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _time(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _search_cast(path: Path, pattern: re.Pattern[str], width: int
                 ) -> Iterator[tuple[str, float, str]]:
    streams = {"o": ("output", _Stream(pattern, width)), "i": ("input", _Stream(pattern, width))}
    for number, event in enumerate(_lines(path)):
        if number == 0 and isinstance(event, dict):
            continue  # the header
        if not (isinstance(event, list) and len(event) == 3 and isinstance(event[2], str)):
            continue
        entry = streams.get(event[1])
        if entry is not None:
            name, stream = entry
            for t, snippet in stream.feed(_time(event[0]), event[2]):
                yield name, t, snippet


def _text(line: dict[str, Any]) -> str:
    if isinstance(line.get("data"), str):
        return str(line["data"])
    if isinstance(line.get("b64"), str):
        try:
            return base64.b64decode(line["b64"]).decode("utf-8", errors="replace")
        except (ValueError, binascii.Error):
            return ""
    return ""


def _search_exec(path: Path, pattern: re.Pattern[str], width: int
                 ) -> Iterator[tuple[str, float, str]]:
    streams = {name: _Stream(pattern, width) for name in ("stdout", "stderr", "stdin")}
    for line in _lines(path):
        if not isinstance(line, dict):
            continue
        kind, t = line.get("type"), _time(line.get("t"))
        if kind == "command" and isinstance(line.get("command"), str):
            for _, snippet in _Stream(pattern, width).feed(t, line["command"]):
                yield "command", t, snippet
        elif isinstance(kind, str) and kind in streams:
            for at, snippet in streams[kind].feed(t, _text(line)):
                yield kind, at, snippet


def _search_transfers(path: Path, pattern: re.Pattern[str]) -> Iterator[tuple[str, float, str]]:
    for line in _lines(path):
        if not isinstance(line, dict):
            continue
        values: list[str] = []
        for key in _TRANSFER_FIELDS:
            value = line.get(key)
            if isinstance(value, str):
                values.append(value)
            elif isinstance(value, list):
                values.extend(v for v in value if isinstance(v, str))
        if any(pattern.search(v) for v in values):
            op = line.get("op", "?")
            yield "transfer", _time(line.get("t")), clean_snippet(f"{op} {' '.join(values)}")


SEARCHED = frozenset({Kind.TERMINAL, Kind.EXEC, Kind.SFTP, Kind.SCP})


def search_session(info: SessionInfo, text: str) -> Iterator[Hit]:
    pattern = re.compile(re.escape(text), re.IGNORECASE)
    width = len(text)
    meta = info.metadata
    for recorded in recorded_files(info.path, kinds=SEARCHED):
        path = recorded.path
        if recorded.kind is Kind.TERMINAL:
            found = _search_cast(path, pattern, width)
        elif recorded.kind is Kind.EXEC:
            found = _search_exec(path, pattern, width)
        else:
            found = _search_transfers(path, pattern)
        for stream, offset, snippet in found:
            yield Hit(info.session_id, meta.get("technician"), meta.get("device"),
                      recorded.name, stream, offset, snippet)


def search(root: Path, text: str) -> Iterator[Hit]:
    """Every hit of ``text`` (case-insensitive) in the sessions under ``root``, oldest first."""
    for info in iter_sessions(root):
        yield from search_session(info, text)
