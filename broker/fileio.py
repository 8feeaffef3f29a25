"""Files replaced whole: a reader sees the old content or the new, never a mix or a stub.

Every file the broker rewrites in place (recording metadata, seals, the chain head, holds,
vault key files, certificates) goes through :func:`write_atomically`: the data is written to a
temporary file beside the target, synced, and renamed over it; on any failure (disk full,
read-only, I/O error) the temporary file is removed and the old file is left as it was.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, mode: int = 0o640, sync: bool = True,
                     sync_directory: bool = True) -> None:
    """Replace ``path`` with ``data`` (created with ``mode``, narrowed by the umask); with
    ``sync``, durably: the file and its directory are synced before this returns. Without
    ``sync_directory`` the caller syncs the directory later (the rename is durable then)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if sync and sync_directory:
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Sync a file or a directory (a directory after entries in it were added or renamed)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
