"""Crash recovery of the recordings chain head.

Sealing writes ``manifest.sig`` and ``manifest.json`` first and ``.chain-head.json`` last
(:func:`broker.recording.manifest.seal_directory`). A broker killed between the two leaves a
session sealed (its manifest links to the head) that the head does not name yet. Left so, the
next seal links to the stale head as well, the chain forks, and ``broker recordings verify
--all`` fails ("sealed session ... is newer than the signed head"): measured by
bench/faults.py (kill -9 under scp load). At start-up, before anything is sealed, the head
is moved on to such a session: exactly what the interrupted seal would have written.

Only a session whose manifest signature verifies and whose ``previous`` names the head
itself (session and manifest SHA-256) is taken, one link at a time, so nothing the chain did
not already commit to can enter it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .manifest import (
    HEAD_FILE,
    MANIFEST_FILE,
    Signer,
    _chain_lock,
    _read_json,
    _session_id,
    write_head,
)
from .verify import _check_signature


def _follower(root: Path, head: dict[str, Any], since: float, signer: Signer
              ) -> tuple[Path, bytes, dict[str, Any]] | None:
    """The one sealed session (manifest written at or after ``since``) that links to
    ``head``, with its manifest bytes; None if there is none (or, never expected, two)."""
    found = []
    for directory in sorted(root.iterdir()):
        manifest_path = directory / MANIFEST_FILE
        try:
            if not directory.is_dir() or manifest_path.stat().st_mtime < since:
                continue
        except OSError:
            continue
        if directory.name == head.get("directory"):
            continue
        data, problems = _check_signature(directory, signer.public_key)
        manifest = _read_json(manifest_path)
        if problems or data is None or manifest is None:
            continue
        previous = manifest.get("previous") or {}
        if (previous.get("session") == head.get("session")
                and previous.get("manifest_sha256") == head.get("manifest_sha256")):
            found.append((directory, data, manifest))
    return found[0] if len(found) == 1 else None


def catch_up_head(root: Path, signer: Signer) -> list[str]:
    """Move the chain head on over sessions sealed after it by a seal that did not finish.
    Returns the sessions it moved over (the caller audits them); [] when the head is right."""
    head_path = root / HEAD_FILE
    if not head_path.exists():
        return []
    moved: list[str] = []
    with _chain_lock(root):
        while True:
            head = _read_json(head_path)
            if head is None or "signature" not in head:
                return moved  # unreadable or unsigned: verify reports it; nothing to follow
            follower = _follower(root, head, head_path.stat().st_mtime - 2.0, signer)
            if follower is None:
                return moved
            directory, data, manifest = follower
            write_head(root, signer, {"directory": directory.name,
                                      "session": _session_id(directory),
                                      "manifest_sha256": hashlib.sha256(data).hexdigest(),
                                      "signed_at": manifest.get("sealed_at")})
            moved.append(_session_id(directory))
