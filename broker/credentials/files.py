"""Writing secret files: created 0600, never overwritten."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, data: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``data``; return False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def write_public(path: Path, data: bytes) -> bool:
    """Create a non-secret file (certificate, public key) unless it exists."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True
