"""Finding recorded sessions for the ``recordings`` and ``replay`` commands."""

from __future__ import annotations

from typing import Any

from broker.cli._base import config_of
from broker.domain.ids import IdError, by_prefix
from broker.errors import NotFound, UsageError
from broker.recording import RecordingError, SessionInfo, iter_sessions


def session_fields(info: SessionInfo) -> dict[str, Any]:
    meta = info.metadata
    return {"id": info.session_id, "directory": str(info.path),
            "technician": meta.get("technician"), "vendor": meta.get("vendor"),
            "device": meta.get("device"), "grant": meta.get("grant"),
            "client": meta.get("client"), "started_at": info.started_at,
            "ended_at": info.ended_at, "end_reason": info.end_reason,
            "files": sorted(p.name for p in info.path.iterdir() if p.is_file())}


def recorded_sessions(config_file: str | None) -> list[SessionInfo]:
    try:
        return list(iter_sessions(config_of(config_file).recordings_dir))
    except RecordingError as exc:
        raise UsageError(str(exc)) from None


def find_session(config_file: str | None, ident: str) -> SessionInfo:
    """A recorded session by its ID, its directory name, or a unique prefix of either."""
    sessions = recorded_sessions(config_file)
    named = [(s.session_id, s) for s in sessions] + [(s.path.name, s) for s in sessions]
    try:
        return by_prefix(ident, named, "recorded session")
    except IdError as exc:
        raise NotFound(f"{exc} (see 'broker recordings list')") from None
