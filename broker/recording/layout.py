"""Where a session's recording lives: its directory name and its ``session.json``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from broker.fileio import write_atomically

METADATA_FILE = "session.json"
DIR_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def directory_name(started_at: datetime, session_id: str) -> str:
    if started_at.tzinfo is None:
        raise ValueError("started_at must be timezone-aware")
    if not _SESSION_ID.fullmatch(session_id):
        raise ValueError(f"session id {session_id!r} is not usable in a directory name")
    return f"{started_at.astimezone(UTC).strftime(DIR_TIME_FORMAT)}-{session_id}"


def write_metadata(path: Path, data: dict[str, object], *, sync: bool,
                   sync_directory: bool = True) -> None:
    """Replace a ``session.json`` whole (see :func:`broker.fileio.write_atomically`)."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    write_atomically(path, text.encode("utf-8"), sync=sync, sync_directory=sync_directory)
