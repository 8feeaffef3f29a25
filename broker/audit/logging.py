"""structlog configuration, in one place: JSON lines, UTC timestamps, secrets never rendered."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({"password", "secret", "token", "private_key", "totp", "credential"})


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor that blanks any field whose name says it holds a secret."""
    for key in event_dict:
        if any(marker in key.lower() for marker in SECRET_KEYS):
            event_dict[key] = "[redacted]"
    return event_dict


_PROCESS_FIELDS: dict[str, Any] = {}


def tag_process(**fields: Any) -> None:
    """Fields every log line of this process carries from now on (a broker worker: its
    index and pid)."""
    _PROCESS_FIELDS.update(fields)


def _add_process_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in _PROCESS_FIELDS.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_process_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def log_to_file(path: Path, level: str = "info") -> None:
    """For one-shot CLI commands: JSON lines appended to the broker's log file (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    configure_logging(os.fdopen(fd, "a", buffering=1, encoding="utf-8"),
                      logging.getLevelName(level.upper()))
