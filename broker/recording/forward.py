"""Port-forward logs: one JSON line when a forwarded connection opens, one when it closes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from .flusher import FlushedFile, Flusher


class ForwardLog:
    def __init__(self, path: Path, *, destination: str, port: int, origin: str,
                 flusher: Flusher | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._start = clock()
        self._file = FlushedFile(path, flusher)
        self.bytes_to_device = 0
        self.bytes_from_device = 0
        self._line({"type": "open", "destination": destination, "port": port,
                    "origin": origin})

    def to_device(self, data: bytes) -> None:
        self.bytes_to_device += len(data)

    def from_device(self, data: bytes) -> None:
        self.bytes_from_device += len(data)

    def close(self, result: str = "closed") -> None:
        if self._file.closed:
            return
        self._line({"type": "close", "bytes_to_device": self.bytes_to_device,
                    "bytes_from_device": self.bytes_from_device, "result": result})
        self._file.close()

    def _line(self, record: dict[str, object]) -> None:
        self._file.write(json.dumps({"t": round(self._clock() - self._start, 6), **record})
                         + "\n")
