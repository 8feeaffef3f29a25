"""Crash safety for recordings: one task pushes every open recording file to disk each interval.

Writers append to a user-space buffer (no system call per chunk). A single :class:`Flusher` task
per process pushes, every ``interval`` seconds, each buffer that received data since the
previous round to the OS and fsyncs it, so a killed broker loses at most the last interval and
a power cut little more. Both happen in a worker thread: with a thousand sessions a round is a
thousand writes, which on a busy disk wait for the journal, and the event loop relaying every
keystroke must not wait with them. The buffer's own lock (Python's buffered files are
thread-safe) keeps a writer's later data behind what the thread is pushing.

A write, flush or fsync that fails (ENOSPC, EROFS, EIO) marks the file failed and is reported
to the flusher's listeners (:meth:`Flusher.on_failure`) from the event loop, once per file: the
broker cuts the session whose recording it is (no session goes on unrecorded). A failed file
takes no more data; what reached the disk before stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from broker import metrics

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
_BUFFER_SIZE = 64 * 1024


class FlushedFile:
    """An append-only file written through a buffer that a :class:`Flusher` keeps on disk."""

    def __init__(self, path: Path, flusher: Flusher | None = None, *, mode: int = 0o640) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        self.path = path
        self._file = os.fdopen(fd, "wb", buffering=_BUFFER_SIZE)
        self._unsynced = False
        self.failed: OSError | None = None
        self._flusher = flusher if flusher is not None else default_flusher()
        self._flusher.register(self)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, text: str) -> None:
        if self._file.closed or self.failed is not None:
            return  # sealed (a channel winding down), or failed (the session is being cut)
        try:
            self._file.write(text.encode("utf-8"))
        except OSError as exc:  # the buffer was full and the disk took none of it
            self.fail(exc)
            return
        self._unsynced = True

    def fail(self, exc: OSError, step: str = "write") -> None:
        """Mark the file failed (once) and tell the flusher's listeners."""
        metrics.RECORDING_FAILURES.labels(step).inc()
        if self.failed is None:
            self.failed = exc
            self._flusher.report(self.path, exc)

    def take(self) -> int | None:
        """On the event loop, for a flush round: a duplicate of the file's descriptor (the
        caller closes it; it stays valid even if the writer closes its file meanwhile) if
        anything was written since the last round, else None."""
        if not self._unsynced or self._file.closed or self.failed is not None:
            return None
        self._unsynced = False
        return os.dup(self._file.fileno())

    def push(self) -> None:
        """In the flush thread: the buffer to the OS (OSError if it cannot be written)."""
        with contextlib.suppress(ValueError):  # closed by its writer since take(): pushed
            self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._flusher.unregister(self)
        try:
            self._file.close()  # flushes the buffer first
        except OSError as exc:  # the file descriptor is closed all the same
            self.fail(exc)


class Flusher:
    """Flushes and fsyncs every registered :class:`FlushedFile` once per ``interval``."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError(f"flush interval must be positive, not {interval!r}")
        self.interval = interval
        self._files: set[FlushedFile] = set()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Path, OSError], None]] = []

    def on_failure(self, listener: Callable[[Path, OSError], None]) -> Callable[[], None]:
        """Call ``listener(path, error)`` (on the event loop) when a file fails; returns a
        function that removes the listener."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def report(self, path: Path, exc: OSError) -> None:
        """A recording file at ``path`` could not be written: tell the listeners."""
        log.error("recording: cannot write %s: %s", path, exc)
        for listener in list(self._listeners):
            try:
                listener(path, exc)
            except Exception:
                log.exception("recording: a failure listener failed")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def register(self, file: FlushedFile) -> None:
        self._files.add(file)
        self._ensure_running()

    def unregister(self, file: FlushedFile) -> None:
        self._files.discard(file)

    async def start(self) -> None:
        self._ensure_running()

    async def stop(self) -> None:
        """Stop the periodic task, then flush and fsync everything once more."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush_now()

    async def flush_now(self) -> int:
        """One round: push every file that changed to the OS and fsync it. Returns how many
        changed."""
        taken: list[tuple[FlushedFile, int]] = []
        started = time.monotonic()
        for file in list(self._files):
            fd = file.take()
            if fd is not None:
                taken.append((file, fd))
        if taken:
            failures = await asyncio.to_thread(_push_and_sync, taken)
            for index, exc, step in failures:
                taken[index][0].fail(exc, step)
            metrics.RECORDING_WRITE.observe(time.monotonic() - started)
        return len(taken)

    def _ensure_running(self) -> None:
        # Started lazily by the first registration too, so a forgotten start() cannot silently
        # cost crash safety. Outside an event loop there is nothing to run it on.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.running and self._task is not None and self._task.get_loop() is loop:
            return
        self._task = loop.create_task(self._run(), name="recording-flusher")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush_now()


def _push_and_sync(taken: list[tuple[FlushedFile, int]]) -> list[tuple[int, OSError, str]]:
    """Push, fsync and close the duplicate of each; (index, error, step) of each failure."""
    failures = []
    for index, (file, fd) in enumerate(taken):
        try:
            file.push()
        except OSError as exc:
            failures.append((index, exc, "flush"))
            os.close(fd)
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            failures.append((index, exc, "fsync"))
        finally:
            os.close(fd)
    return failures


_default: Flusher | None = None


def default_flusher() -> Flusher:
    """The process-wide flusher used by writers that are not given one."""
    global _default
    if _default is None:
        _default = Flusher()
    return _default
