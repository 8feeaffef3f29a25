"""One recorded session: a directory holding ``session.json`` and one file per channel.

The directory is named ``YYYYmmddTHHMMSSZ-<session id>`` (UTC start time), so a plain sorted
listing of the recordings root is in time order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from broker.fileio import fsync_path

from .asciicast import AsciicastWriter, Clock, ExecLog
from .files import Kind, file_stem
from .flusher import Flusher, default_flusher
from .layout import DIR_TIME_FORMAT, METADATA_FILE, directory_name, write_metadata
from .manifest import Signer, seal_directory

__all__ = ["DIR_TIME_FORMAT", "METADATA_FILE", "SessionRecording", "directory_name"]

log = logging.getLogger(__name__)



def _utc_now() -> datetime:
    return datetime.now(UTC)


class SessionRecording:
    """The recording of one technician connection; create it with :meth:`create`."""

    def __init__(
        self,
        path: Path,
        metadata: dict[str, object],
        *,
        flusher: Flusher | None = None,
        clock: Clock = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        signer: Signer | None = None,
    ) -> None:
        self._path = path
        self._signer = signer
        self._metadata = metadata
        self._flusher = flusher
        self._clock = clock
        self._now = now
        self._files: list[Path] = []
        self._writers: list[AsciicastWriter | ExecLog] = []
        self._closed = False

    @classmethod
    def create(
        cls,
        root: Path,
        session_id: str,
        started_at: datetime,
        metadata: dict[str, object],
        *,
        flusher: Flusher | None = None,
        clock: Clock = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        signer: Signer | None = None,
    ) -> SessionRecording:
        """Create the session directory and its ``session.json``.

        ``metadata`` should name ``technician``, ``vendor``, ``device``, ``grant`` and
        ``client`` (address); ``session``, ``started_at``, ``ended_at`` and ``end_reason``
        are filled in here. With a ``signer`` (the recording key), :meth:`close` seals the
        directory: ``manifest.json`` and ``manifest.sig`` (see :mod:`.manifest`).
        """
        root.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = root / directory_name(started_at, session_id)
        path.mkdir(mode=0o750)
        path.chmod(0o750)  # mkdir's mode is filtered by the umask
        full: dict[str, object] = {
            **metadata,
            "session": session_id,
            "started_at": started_at.astimezone(UTC).isoformat(),
            "ended_at": None,
            "end_reason": None,
        }
        recording = cls(path, full, flusher=flusher, clock=clock, now=now, signer=signer)
        try:
            write_metadata(path / METADATA_FILE, full, sync=False)
        except OSError:
            # (a full disk) no session opens: leave no directory that looks like a lost one
            with contextlib.suppress(OSError):
                path.rmdir()
            raise
        recording._files.append(path / METADATA_FILE)
        return recording

    @property
    def path(self) -> Path:
        return self._path

    @property
    def metadata(self) -> dict[str, object]:
        return dict(self._metadata)

    def files(self) -> list[Path]:
        """Every file this recording created, ``session.json`` first."""
        return list(self._files)

    def add_file(self, stem: str, suffix: str) -> Path:
        """Reserve a fresh file name in the session directory (for other kinds of logs)."""
        path = self._path / f"{stem}{suffix}"
        n = 1
        # SSH channel numbers are reused after a channel closes; never overwrite a recording.
        while path in self._files or path.exists():
            n += 1
            path = self._path / f"{stem}-{n}{suffix}"
        self._files.append(path)
        return path

    def file_for(self, kind: Kind, channel: int | None = None) -> Path:
        """A fresh file for a recorder of ``kind`` (see :mod:`broker.recording.files`)."""
        return self.add_file(file_stem(kind, channel), kind.suffix)

    def terminal(
        self,
        channel: int,
        *,
        width: int,
        height: int,
        term: str,
        env: dict[str, str],
        command: str | None = None,
    ) -> AsciicastWriter:
        header_env = {**env, "TERM": term}  # what the device was given
        md = self._metadata
        writer = AsciicastWriter(
            self.file_for(Kind.TERMINAL, channel),
            width=width,
            height=height,
            timestamp=int(self._now().timestamp()),
            env=header_env,
            title=f"{md.get('technician', '?')}@{md.get('device', '?')}",
            command=command,
            extra={"broker": self._broker_header(channel)},
            clock=self._clock,
            flusher=self._flusher,
        )
        self._writers.append(writer)
        return writer

    def exec_log(self, channel: int, command: str) -> ExecLog:
        log = ExecLog(
            self.file_for(Kind.EXEC, channel),
            command,
            clock=self._clock,
            flusher=self._flusher,
        )
        self._writers.append(log)
        return log

    async def close(self, end_reason: str) -> None:
        """Close every writer, record the end in ``session.json`` and sync it all to disk;
        with a signer, seal the directory (a failure to seal is logged, not raised)."""
        if self._closed:
            return
        self._closed = True
        for writer in self._writers:
            writer.close()
        self._close_other_files()
        self._metadata["ended_at"] = self._now().astimezone(UTC).isoformat()
        self._metadata["end_reason"] = end_reason
        try:
            await asyncio.to_thread(self._finish, dict(self._metadata))
        except OSError as exc:  # the disk fails (full, read-only): the session still ends,
            # and the broker seals this directory once the disk takes writes again
            (self._flusher or default_flusher()).report(self._path / METADATA_FILE, exc)

    def _finish(self, metadata: dict[str, object]) -> None:
        for path in self._files[1:]:
            if path.exists():
                fsync_path(path)
        # A seal syncs this directory after its signature, before its manifest: that also
        # makes the new session.json's name durable, so only an unsealed one syncs it here.
        write_metadata(self._path / METADATA_FILE, metadata, sync=True, sync_directory=False)
        fsync_path(self._path.parent)
        sealed = False
        if self._signer is not None:
            try:
                sealed = seal_directory(self._path, self._signer, sealed_by="close",
                                        now=self._now)
            except OSError:
                raise  # reported by close(), sealed again when the disk takes writes
            except ValueError:
                log.exception("recording: cannot seal %s", self._path)
        if not sealed:
            fsync_path(self._path)

    def _close_other_files(self) -> None:
        """Close the logs other recorders opened in this directory (SFTP, scp, forwards), so
        nothing is appended after the session ends (and, sealed, the manifest stays true)."""
        flushers = {id(f): f for f in (self._flusher, default_flusher()) if f is not None}
        for flusher in flushers.values():
            for file in list(flusher._files):
                if file.path.parent == self._path:
                    file.close()

    def _broker_header(self, channel: int) -> dict[str, object]:
        md = self._metadata
        header: dict[str, object] = {
            k: md[k] for k in ("technician", "vendor", "device", "grant") if k in md
        }
        return {**header, "session": md["session"], "channel": channel}
