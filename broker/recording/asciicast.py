"""Per-channel recording writers: asciicast v2 for terminals, JSON lines for exec channels.

asciicast v2: https://docs.asciinema.org/manual/asciicast/v2/ -- a JSON header line, then one
``[time, code, data]`` line per event, time in seconds since the start of the recording.
"""

from __future__ import annotations

import base64
import codecs
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .flusher import FlushedFile, Flusher

Clock = Callable[[], float]

_json = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))
_encode = _json.encode


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class AsciicastWriter:
    """Records one terminal channel as an asciicast v2 file playable by stock asciinema."""

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        timestamp: int | None = None,
        env: Mapping[str, str] | None = None,
        title: str | None = None,
        command: str | None = None,
        extra: Mapping[str, object] | None = None,
        clock: Clock = time.monotonic,
        flusher: Flusher | None = None,
    ) -> None:
        header: dict[str, object] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(time.time()) if timestamp is None else timestamp,
        }
        if env:
            header["env"] = dict(env)
        if title is not None:
            header["title"] = title
        if command is not None:
            header["command"] = command
        if extra:
            header.update(extra)
        self._clock = clock
        self._start = clock()
        self._out = _utf8_decoder()
        self._in = _utf8_decoder()
        self._file = FlushedFile(path, flusher)
        self._file.write(_encode(header) + "\n")

    @property
    def path(self) -> Path:
        return self._file.path

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def marker(self, label: str) -> None:
        """An asciicast v2 marker (``"m"``): a broker event at this moment of the session
        (a refused command, a supervisor joining ...); players list them as chapters."""
        self._event("m", label)

    def close(self) -> None:
        if self._file.closed:
            return
        # Bytes of an unfinished character still held by a decoder become U+FFFD.
        self._event("o", self._out.decode(b"", final=True))
        self._event("i", self._in.decode(b"", final=True))
        self._file.close()

    def _event(self, code: str, text: str) -> None:
        if text:
            self._file.write(f'[{self._clock() - self._start:.6f}, "{code}", {_encode(text)}]\n')


class _Stream:
    """Decodes one exec stream losslessly: UTF-8 text as ``data``, anything else as ``b64``."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")

    def decode(self, chunk: bytes, final: bool = False) -> tuple[str, str]:
        pending, _ = self._decoder.getstate()
        try:
            return "data", self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            self._decoder.reset()
            return "b64", base64.b64encode(pending + chunk).decode("ascii")


class ExecLog:
    """Records one exec channel (``ssh host CMD``) as JSON lines.

    Lines: ``{"t", "type": "command", "command"}``, then ``{"t", "type": "stdout"|"stderr"|
    "stdin", "data"}`` (``"b64"`` instead of ``"data"`` for bytes that are not UTF-8), then
    ``{"t", "type": "exit", "status"}`` and/or ``"signal"``; ``{"t", "type": "marker",
    "label"}`` for a broker event (a refused command, a supervisor joining ...).
    """

    def __init__(
        self,
        path: Path,
        command: str,
        *,
        clock: Clock = time.monotonic,
        flusher: Flusher | None = None,
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._streams = {name: _Stream() for name in ("stdout", "stderr", "stdin")}
        self._file = FlushedFile(path, flusher)
        self._line({"type": "command", "command": command})

    @property
    def path(self) -> Path:
        return self._file.path

    def stdout(self, data: bytes) -> None:
        self._data("stdout", data)

    def stderr(self, data: bytes) -> None:
        self._data("stderr", data)

    def stdin(self, data: bytes) -> None:
        self._data("stdin", data)

    def marker(self, label: str) -> None:
        self._line({"type": "marker", "label": label})

    def exit(self, status: int | None, signal: str | None = None) -> None:
        line: dict[str, object] = {"type": "exit"}
        if status is not None:
            line["status"] = status
        if signal is not None:
            line["signal"] = signal
        self._line(line)

    def close(self) -> None:
        if self._file.closed:
            return
        for name in self._streams:
            self._data(name, b"", final=True)
        self._file.close()

    def _data(self, name: str, chunk: bytes, final: bool = False) -> None:
        key, value = self._streams[name].decode(chunk, final)
        if value:
            self._line({"type": name, key: value})

    def _line(self, fields: dict[str, object]) -> None:
        t = round(self._clock() - self._start, 6)
        self._file.write(_encode({"t": t, **fields}) + "\n")
