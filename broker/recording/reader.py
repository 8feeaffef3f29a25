"""Reading recordings back: asciicast files and the sessions under a recordings root."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .layout import DIR_TIME_FORMAT, METADATA_FILE

Event = tuple[float, str, str]


class RecordingError(ValueError):
    """A recording file that cannot be read."""


class CastError(RecordingError):
    """A file that is not a readable asciicast v2 recording."""


@dataclass(frozen=True)
class Cast:
    header: dict[str, Any]
    events: list[Event]
    # The last line was cut short (a crash mid-write) and was skipped.
    truncated: bool = False


def read_cast(path: Path) -> Cast:
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines:
        raise CastError(f"{path}: empty file, no asciicast header")
    try:
        header = json.loads(lines[0])
    except ValueError as e:
        raise CastError(f"{path}:1: header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CastError(f"{path}:1: not an asciicast v2 header")
    events: list[Event] = []
    last = len(lines) - 1
    for number, line in enumerate(lines[1:], start=2):
        try:
            events.append(_event(line))
        except ValueError as e:
            if number - 1 == last:
                return Cast(header, events, truncated=True)
            raise CastError(f"{path}:{number}: {e}") from None
    return Cast(header, events)


def _event(line: bytes) -> Event:
    value = json.loads(line)
    if not (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], int | float)
        and isinstance(value[1], str)
        and isinstance(value[2], str)
    ):
        raise ValueError("not an event [time, code, data]")
    return float(value[0]), value[1], value[2]


def output_text(cast: Cast) -> str:
    """Everything the terminal displayed, escape sequences included."""
    return "".join(data for _, code, data in cast.events if code == "o")


@dataclass(frozen=True)
class SessionInfo:
    path: Path
    session_id: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def iter_sessions(root: Path) -> Iterator[SessionInfo]:
    """Every recorded session under ``root``, oldest first."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        info = _session(path)
        if info is not None:
            yield info


def _session(path: Path) -> SessionInfo | None:
    stamp, sep, session_id = path.name.partition("-")
    if not sep or not path.is_dir():
        return None
    try:
        started_at = datetime.strptime(stamp, DIR_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    metadata: dict[str, Any] = {}
    meta_path = path / METADATA_FILE
    if meta_path.exists():
        try:
            metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise RecordingError(f"{meta_path}: not JSON ({e})") from None
    ended = metadata.get("ended_at")
    return SessionInfo(
        path=path,
        session_id=session_id,
        started_at=datetime.fromisoformat(metadata.get("started_at") or started_at.isoformat()),
        ended_at=datetime.fromisoformat(ended) if ended else None,
        end_reason=metadata.get("end_reason"),
        metadata=metadata,
    )
