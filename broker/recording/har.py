"""HAR 1.2 for web sessions, written as the session runs.

``web.har`` is one JSON document whose entries are appended one per line as each exchange
completes, through a :class:`FlushedFile` (flushed every half second, like every recorder):

    {"log": {"version": "1.2", "creator": {...}, "pages": [], "entries": [
    {...first entry...}
    ,{...next entry...}
    ]}}

A broker crash leaves the closing ``]}}`` (and at most a half-written last line) missing;
:func:`read_har` repairs that. Bodies up to ``body_limit`` bytes are kept inside the HAR
(``text``, base64 for binary content); larger ones go to ``bodies/<sha256>`` and the HAR names
them (``_file``, ``_sha256``). WebSocket messages are appended to ``websocket-N.jsonl`` as they
pass and copied into the entry's ``_webSocketMessages`` when the socket closes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker import metrics
from broker.errors import RecordingUnavailable

from .flusher import FlushedFile, Flusher, default_flusher
from .jsontext import compact

HAR_FILE = "web.har"
BODIES_DIR = "bodies"
CREATOR = {"name": "vendor-access-broker", "version": "1"}
MAX_WS_MESSAGES = 100_000  # kept for the HAR entry; the .jsonl side file keeps every one
_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
               "application/x-www-form-urlencoded", "image/svg+xml", "+json", "+xml")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_text(mime: str) -> bool:
    mime = mime.lower()
    return any(mime.startswith(t) if t.endswith("/") else t in mime for t in _TEXT_TYPES)


class BodyCapture:
    """Takes a body chunk by chunk: in memory up to ``limit`` bytes, then spilled to a file
    under ``bodies/`` named by its SHA-256 when finished.

    A spill the storage does not take (full, read-only, failing) is reported to ``report``
    (the flusher's listeners: the session is cut) and :meth:`feed` raises
    :class:`RecordingUnavailable`, so the caller passes no byte on unrecorded; the entry then
    names the body's size and SHA-256 and why it was lost (``lost``)."""

    def __init__(self, directory: Path, limit: int,
                 report: Callable[[Path, OSError], None] | None = None) -> None:
        self._directory = directory
        self._limit = limit
        self._report = report
        self._hash = hashlib.sha256()
        self._memory = bytearray()
        self._spill: Any = None
        self._spill_path: Path | None = None
        self.size = 0
        self.lost: str | None = None
        self.result: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        if not chunk or self.result is not None:
            return
        if self.lost is not None:
            raise RecordingUnavailable(self.lost)
        self.size += len(chunk)
        self._hash.update(chunk)
        if self._spill is None and self.size <= self._limit:
            self._memory.extend(chunk)
            return
        try:
            if self._spill is None:
                self._directory.mkdir(mode=0o750, exist_ok=True)
                self._spill_path = self._directory / f".partial-{os.getpid()}-{id(self):x}"
                fd = os.open(self._spill_path,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
                self._spill = os.fdopen(fd, "wb", buffering=256 * 1024)
                self._spill.write(self._memory)
                self._memory = bytearray()
            self._spill.write(chunk)
        except OSError as exc:
            self._fail(exc)
            raise RecordingUnavailable(self.lost or "") from exc

    def finish(self) -> dict[str, Any]:
        """``{"size", "sha256", "inline": bytes | None, "file": "bodies/<sha256>" | None,
        "lost": None | why the body could not be kept}``."""
        if self.result is not None:
            return self.result
        digest = self._hash.hexdigest()
        file = None
        if self._spill is not None and self._spill_path is not None and self.lost is None:
            try:
                self._spill.flush()
                os.fsync(self._spill.fileno())
                self._spill.close()
                final = self._directory / digest
                if final.exists():  # the same body was stored before: keep one copy
                    self._spill_path.unlink()
                else:
                    os.replace(self._spill_path, final)
                file = f"{BODIES_DIR}/{digest}"
            except OSError as exc:
                self._fail(exc)
        self.result = {"size": self.size, "sha256": digest, "file": file, "lost": self.lost,
                       "inline": None if file or self.lost else bytes(self._memory)}
        self._memory = bytearray()
        return self.result

    def _fail(self, exc: OSError) -> None:
        """Give up the spill (what it held is not kept) and report the storage's failure."""
        self.lost = exc.strerror or str(exc)
        metrics.RECORDING_FAILURES.labels("write").inc()
        if self._spill is not None:
            with contextlib.suppress(OSError):
                self._spill.close()
        if self._spill_path is not None:
            with contextlib.suppress(OSError):
                self._spill_path.unlink()
        self._memory = bytearray()
        if self._report is not None:  # named by bodies/, whose parent is the session's
            self._report(self._directory, exc)


def body_fields(captured: Mapping[str, Any], mime: str) -> dict[str, Any]:
    """HAR ``content`` / ``postData`` fields for a captured body."""
    fields: dict[str, Any] = {"mimeType": mime or "application/octet-stream"}
    if captured.get("lost"):  # the storage failed: what is known of it, and why
        fields.update(_lost=captured["lost"], _size=captured["size"],
                      _sha256=captured["sha256"])
        return fields
    if captured.get("file"):
        fields.update(_file=captured["file"], _sha256=captured["sha256"])
        return fields
    data: bytes = captured.get("inline") or b""
    if is_text(mime):
        try:
            fields["text"] = data.decode("utf-8")
            return fields
        except UnicodeDecodeError:
            pass
    fields.update(text=base64.b64encode(data).decode("ascii"), encoding="base64")
    return fields


def name_values(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


class WebSocketLog:
    """One relayed WebSocket: each message appended to ``websocket-N.jsonl`` as it passes,
    and kept (up to :data:`MAX_WS_MESSAGES`) for the HAR entry."""

    def __init__(self, path: Path, flusher: Flusher | None = None,
                 clock: Any = time.time) -> None:
        self.path = path
        self._file = FlushedFile(path, flusher)
        self._clock = clock
        self.messages: list[dict[str, Any]] = []
        self.count = 0

    def message(self, direction: str, data: str | bytes, limit: int) -> None:
        """``direction``: ``send`` (browser to device) or ``receive``."""
        record: dict[str, Any] = {"type": direction, "time": round(self._clock(), 6),
                                  "opcode": 1 if isinstance(data, str) else 2}
        raw = data.encode("utf-8") if isinstance(data, str) else data
        if len(raw) > limit:
            record["_size"] = len(raw)
            record["_sha256"] = hashlib.sha256(raw).hexdigest()
            raw = raw[:limit]
            record["_truncated"] = True
        record["data"] = (raw.decode("utf-8", "replace") if isinstance(data, str)
                          else base64.b64encode(raw).decode("ascii"))
        self.count += 1
        self._file.write_bytes(compact(record) + b"\n")
        if len(self.messages) < MAX_WS_MESSAGES:
            self.messages.append(record)

    def close(self) -> None:
        self._file.close()


class HarWriter:
    """Appends HAR entries to ``path`` (``web.har`` in a session directory)."""

    def __init__(self, path: Path, *, body_limit: int, flusher: Flusher | None = None,
                 comment: str | None = None) -> None:
        self.path = path
        self.body_limit = body_limit
        self._flusher = flusher
        self._file = FlushedFile(path, flusher)
        self.entries = 0
        self._sockets = 0
        log: dict[str, Any] = {"version": "1.2", "creator": CREATOR, "pages": []}
        if comment:
            log["comment"] = comment
        header = json.dumps({"log": log}, ensure_ascii=False, separators=(",", ":"))
        # '{"log":{...,"pages":[]}}' -> keep it open for the entries array
        self._file.write(header[:-2] + ',"entries":[')

    @property
    def closed(self) -> bool:
        return self._file.closed

    def body(self) -> BodyCapture:
        flusher = self._flusher if self._flusher is not None else default_flusher()
        return BodyCapture(self.path.parent / BODIES_DIR, self.body_limit, flusher.report)

    def websocket(self, path: Path | None = None) -> WebSocketLog:
        """A log for one more WebSocket (``websocket-N.jsonl`` unless ``path`` is given)."""
        self._sockets += 1
        return WebSocketLog(path or self.path.with_name(f"websocket-{self._sockets}.jsonl"),
                            self._flusher)

    def add(self, entry: Mapping[str, Any]) -> None:
        if self._file.closed:
            return
        self._file.write_bytes((b"\n," if self.entries else b"\n") + compact(entry))
        self.entries += 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.write("\n]}}\n")
        self._file.close()


def read_har(path: Path) -> dict[str, Any]:
    """The HAR document; a file cut short by a crash is read up to its last whole entry
    (``log._truncated`` is then true)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    head = lines[0]
    if not head.endswith('"entries":['):
        raise ValueError(f"{path}: not a HAR written by the broker")
    document: dict[str, Any] = json.loads(head + "]}}")
    entries: list[Any] = document["log"]["entries"]
    complete = False
    for line in lines[1:]:
        if line.strip() == "]}}":
            complete = True
            break
        try:
            entries.append(json.loads(line.removeprefix(",")))
        except json.JSONDecodeError:
            break
    if not complete:
        document["log"]["_truncated"] = True
    return document
