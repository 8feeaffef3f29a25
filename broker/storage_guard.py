"""Fail closed on recording storage (issue #18): what a node does when the flusher cannot
write a recording file.

No session goes on unrecorded. The session whose file failed is cut with one line; when the
storage itself fails (no space, quota, read-only, I/O error) every live session of the node
is cut with it, an idle one too, since whatever it does next could not be recorded. New
sessions are refused meanwhile (:func:`broker.services.readiness.new_session_refusal` sees
``NodeState.recording_error``). A recording whose close could not finish its seal is sealed
once the directory takes writes again, so that ``broker recordings verify --all`` stays
clean; everything is audited as ``recording.failed``.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from broker.recording import default_flusher, signer_for
from broker.recording.layout import METADATA_FILE
from broker.recording.manifest import seal_directory
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from broker.services.readiness import NodeState
from broker.services.readiness import writable as writable_problems

log = structlog.get_logger("broker.server")
# a recording write failing with one of these is the recordings storage failing, not one file
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class StorageGuard:
    def __init__(self, ctx: Context, sessions: LiveSessions, node: NodeState,
                 audit: Callable[..., Awaitable[None]]) -> None:
        self.ctx, self.sessions, self.node = ctx, sessions, node
        self._audit = audit  # a node event, written or at least logged
        self._failed_recordings: set[Path] = set()
        self._unsealed: set[Path] = set()  # recordings whose close failed to seal
        self._resealing: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._unlisten: Callable[[], None] | None = None

    def start(self) -> None:
        self._unlisten = default_flusher().on_failure(self.recording_failed)

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        if self._resealing is not None:
            self._resealing.cancel()

    def recording_failed(self, path: Path, error: OSError) -> None:
        """The flusher could not write a recording file: cut its session (once)."""
        task = asyncio.ensure_future(self._recording_failed(path, error))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recording_failed(self, path: Path, error: OSError) -> None:
        text = error.strerror or str(error)
        self.node.recording_failed(text)
        directory = path.parent
        if path.name == METADATA_FILE:  # its close could not finish: seal it when possible
            self._unsealed.add(directory)
            if self._resealing is None or self._resealing.done():
                self._resealing = asyncio.ensure_future(self._seal_when_writable())
        if directory in self._failed_recordings:
            return
        self._failed_recordings.add(directory)
        session = next((s for s in self.sessions
                        if getattr(getattr(s, "recording", None), "path", None) == directory),
                       None)
        # the storage itself fails (full, read-only, broken): every recording on it will,
        # so every session is cut now, not each at its next write (an idle one much later)
        others = ([s for s in self.sessions if s is not session]
                  if error.errno in STORAGE_ERRNOS else [])
        log.error("recording failed; cutting its session", recording=directory.name,
                  error=text, technician=session.technician if session else None,
                  others_cut=len(others))
        cuts = [s.terminate(f"the broker cannot write session recordings ({text}), and no"
                            " session goes on unrecorded") for s in others]
        if session is not None:
            cuts.append(session.terminate(f"this session's recording cannot be written ({text}),"
                                          " and no session goes on unrecorded"))
        await asyncio.gather(*cuts, self._audit(
            "recording.failed", recording=directory.name, error=text,
            errno=error.errno, session_cut=session is not None, others_cut=len(others),
            technician=session.technician if session else None,
            device=session.device if session else None), return_exceptions=True)

    async def _seal_when_writable(self) -> None:
        """Seal the recordings whose close failed, once the directory takes writes again
        (checked each second), so that they verify like every other."""
        signer = signer_for(self.ctx.config)
        while self._unsealed:
            await asyncio.sleep(1)
            if await asyncio.to_thread(writable_problems, self.ctx.config.recordings_dir):
                continue
            for directory in sorted(self._unsealed):
                if not await asyncio.to_thread(directory.is_dir):
                    # removed meanwhile (by hand): nothing left to seal, and it must not hold
                    # up the others; verify and the audit log tell the rest
                    self._unsealed.discard(directory)
                    log.error("recording: gone before it could be sealed",
                              recording=directory.name)
                    await self._audit("recording.unsealed", recording=directory.name,
                                      error="the session's recording directory is gone")
                    continue
                try:
                    await asyncio.to_thread(seal_directory, directory, signer,
                                            sealed_by="recovery")
                except (OSError, ValueError) as exc:
                    log.error("recording: still cannot seal", recording=directory.name,
                              error=str(exc))
                    break
                self._unsealed.discard(directory)
                log.warning("recording sealed after the disk recovered",
                            recording=directory.name)
            else:
                self.node.recording_error = None

