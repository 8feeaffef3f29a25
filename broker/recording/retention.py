"""Retention: legal holds and pruning sealed sessions older than ``[recording] retain_days``.

Holds live in ``<root>/.holds.json`` (a marker file inside a session directory would be a
file added after sealing, which verification reports). Pruned sessions are added, with
their manifest hashes, to the signed ``<root>/.pruned.json`` before they are deleted, so the
next session's link to them still verifies (see :func:`.manifest.verify_all`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker.fileio import fsync_path, write_atomically

from .manifest import MANIFEST_FILE, SIGNATURE_FILE, Signer, chain_lock, record_pruned
from .reader import SessionInfo, iter_sessions

HOLDS_FILE = ".holds.json"


def read_holds(root: Path) -> dict[str, dict[str, Any]]:
    """Sessions on legal hold: id -> {"since", "by"}."""
    try:
        value = json.loads((root / HOLDS_FILE).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root / HOLDS_FILE}: unreadable ({exc})") from None
    holds = value.get("sessions") if isinstance(value, dict) else None
    if not isinstance(holds, dict):
        raise ValueError(f"{root / HOLDS_FILE}: no 'sessions' object")
    return holds


def set_hold(root: Path, session_id: str, on: bool, by: str, now: datetime) -> bool:
    """Put a session on hold or release it; returns whether anything changed."""
    with chain_lock(root):
        holds = read_holds(root)
        if on == (session_id in holds):
            return False
        if on:
            holds[session_id] = {"since": now.isoformat(), "by": by}
        else:
            del holds[session_id]
        data = json.dumps({"sessions": dict(sorted(holds.items()))}, indent=2) + "\n"
        write_atomically(root / HOLDS_FILE, data.encode("utf-8"))
    return True


@dataclass(frozen=True)
class PruneResult:
    deleted: list[str]
    held: list[str]  # old enough, but on hold


def _ended(info: SessionInfo) -> datetime:
    return info.ended_at or info.started_at


def prune(root: Path, signer: Signer, retain_days: int, now: datetime, *,
          dry_run: bool = False) -> PruneResult:
    """Delete sealed sessions that ended more than ``retain_days`` ago and are not on hold.

    Sessions not sealed (running, or not yet recovered) are never touched.
    """
    cutoff = now - timedelta(days=retain_days)
    deleted: list[str] = []
    held: list[str] = []
    if not root.is_dir():
        return PruneResult(deleted, held)
    with chain_lock(root):
        holds = read_holds(root)
        old: list[tuple[SessionInfo, str]] = []
        for info in iter_sessions(root):
            manifest = info.path / MANIFEST_FILE
            if (not manifest.is_file() or not (info.path / SIGNATURE_FILE).is_file()
                    or _ended(info) >= cutoff):
                continue
            if info.session_id in holds:
                held.append(info.session_id)
                continue
            old.append((info, hashlib.sha256(manifest.read_bytes()).hexdigest()))
        deleted = [info.session_id for info, _ in old]
        if dry_run or not old:
            return PruneResult(deleted, held)
        # Record first: a crash after this leaves extra entries, never an unexplained gap.
        record_pruned(root, signer, {info.session_id: digest for info, digest in old})
        for info, _ in old:
            shutil.rmtree(info.path)
        fsync_path(root)
    return PruneResult(deleted, held)
