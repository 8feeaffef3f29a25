"""JSON-lines operation logs shared by the file-transfer recorders (SFTP, scp).

One line per operation: ``{"t": seconds since the log was opened, "op": ..., ...}``, written
through a :class:`FlushedFile` (so at most one flush interval is lost in a crash).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .flusher import FlushedFile, Flusher

_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode

#: How many of the most recent records :attr:`OpLog.records` keeps in memory.
RECENT_RECORDS = 10_000


def decode_path(raw: bytes | bytearray | memoryview) -> str:
    """SFTP/scp paths are bytes: UTF-8 where possible, ``\\xNN`` escapes for anything else."""
    return bytes(raw).decode("utf-8", errors="backslashreplace")


class OpLog:
    """Appends one JSON object per line to ``path``; keeps the most recent ones for callers."""

    def __init__(self, path: Path, *, flusher: Flusher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()
        self._file = FlushedFile(path, flusher)
        self.count = 0
        self.records: deque[dict[str, object]] = deque(maxlen=RECENT_RECORDS)

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def closed(self) -> bool:
        return self._file.closed

    def elapsed(self) -> float:
        return round(self._clock() - self._start, 6)

    def write(self, record: dict[str, object]) -> None:
        if self._file.closed:
            return
        line = {"t": self.elapsed(), **record}
        self._file.write(_encode(line) + "\n")
        self.count += 1
        self.records.append(line)

    def close(self) -> None:
        self._file.close()
