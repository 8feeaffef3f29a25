"""The storage guard's resealing: recordings whose close could not finish are sealed once the
recordings directory takes writes again; one removed meanwhile is audited and dropped, and
does not hold up the others."""

from __future__ import annotations

import asyncio
import errno
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from broker.config import load_config
from broker.recording import MANIFEST_FILE, SessionRecording
from broker.recording.layout import METADATA_FILE
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.readiness import NodeState
from broker.storage_guard import StorageGuard

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def unsealed(root: Path, session_id: str) -> Path:
    recording = SessionRecording.create(root, session_id, T0, {"technician": "t",
                                                               "device": "d"})
    return recording.path


async def test_a_removed_recording_is_audited_and_the_others_still_sealed(
        broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    audited: list[tuple[str, dict[str, object]]] = []

    async def audit(kind: str, **data: object) -> None:
        audited.append((kind, data))

    node = NodeState()
    guard = StorageGuard(ctx, LiveSessions(), node, audit)
    root = ctx.config.recordings_dir
    gone, kept = unsealed(root, "aaaa-gone"), unsealed(root, "bbbb-kept")
    try:
        for directory in (gone, kept):  # as the flusher reports a close that failed
            guard.recording_failed(directory / METADATA_FILE,
                                   OSError(errno.ENOSPC, "No space left on device"))
        shutil.rmtree(gone)  # by hand, before the disk took writes again
        deadline = time.monotonic() + 10
        while not (kept / MANIFEST_FILE).exists():
            assert time.monotonic() < deadline, "the kept recording was never sealed"
            await asyncio.sleep(0.1)
        assert ("recording.unsealed", {"recording": gone.name, "error":
                "the session's recording directory is gone"}) in audited
        assert [kind for kind, _ in audited].count("recording.failed") == 2
        deadline = time.monotonic() + 5
        while node.recording_error is not None:
            assert time.monotonic() < deadline, node.recording_error
            await asyncio.sleep(0.1)
    finally:
        guard.stop()
        await ctx.close()
