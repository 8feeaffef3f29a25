"""A session's non-terminal recordings (exec, SFTP, scp, forward logs) as lines a person reads,
for ``broker replay``. Text that came from the device or the technician is shown with control
characters escaped, so a recorded escape sequence cannot act on the auditor's terminal."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

from broker.domain.text import visible
from broker.recording.reader import RecordingError

_SKIPPED = {"t", "op", "type"}


def log_lines(path: Path) -> Iterator[str]:
    """One readable line (or block, for output) per record of a JSON-lines recording."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{path.name}: cannot read: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield f"[{path.name}:{number}: not JSON; the file may be damaged]"
            continue
        if isinstance(record, dict):
            yield _describe(record)


def har_lines(path: Path) -> Iterator[str]:
    """A web session's HAR as one line per request: time, method, URL, status, size."""
    try:
        har = json.loads(path.read_text(encoding="utf-8"))
        entries = har["log"]["entries"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RecordingError(f"{path.name}: not a readable HAR file ({exc})") from None
    for entry in entries:
        request, response = entry.get("request", {}), entry.get("response", {})
        size = response.get("content", {}).get("size", "?")
        yield (f"{visible(str(entry.get('startedDateTime', '?')))}  "
               f"{visible(str(request.get('method', '?')))} {visible(str(request.get('url', '?')))}"
               f" -> {response.get('status', '?')} ({size} bytes)")


def _describe(record: dict[str, object]) -> str:
    at = f"{float(str(record.get('t', 0))):8.3f}s"
    kind = str(record.get("type") or record.get("op") or "?")
    if kind == "command":
        return f"{at}  $ {visible(str(record.get('command', '')))}"
    if kind in ("stdout", "stderr", "stdin"):
        data = record.get("data")
        if data is None and isinstance(record.get("b64"), str):
            data = base64.b64decode(str(record["b64"])).decode("utf-8", "backslashreplace")
        lines = [visible(line) for line in str(data or "").rstrip("\n").split("\n")]
        return f"{at}  [{kind}] " + f"\n{'':>9}  [{kind}] ".join(lines)
    fields = " ".join(f"{key}={visible(_short(value))}" for key, value in record.items()
                      if key not in _SKIPPED and value is not None)
    return f"{at}  {kind} {fields}".rstrip()


def _short(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
