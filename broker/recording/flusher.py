"""Crash safety for recordings: one task pushes every open recording file to disk each interval.

Writers append to a user-space buffer (no system call per chunk). A single :class:`Flusher` task
per process pushes, every ``interval`` seconds, each buffer that received data since the
previous round to the OS and fsyncs it, so a killed broker loses at most the last interval and
a power cut little more. Both happen in a worker thread: with a thousand sessions a round is a
thousand writes, which on a busy disk wait for the journal, and the event loop relaying every
keystroke must not wait with them. The buffer's own lock (Python's buffered files are
thread-safe) keeps a writer's later data behind what the thread is pushing.

A round's files are made durable together: on Linux 5.8 and later one ``syncfs`` per file
system (a thousand sessions' fsyncs cost a tenth of a second of CPU and wall time a round; one
``syncfs`` costs under 2 ms), asked on a directory descriptor the flusher keeps open, so that a
write-back error anywhere on that file system since the last round is reported to it. Then,
and wherever ``syncfs`` is not to be trusted, each file is fsynced on its own, which names the
file that failed.

A write, flush or fsync that fails (ENOSPC, EROFS, EIO) marks the file failed and is reported
to the flusher's listeners (:meth:`Flusher.on_failure`) from the event loop, once per file: the
broker cuts the session whose recording it is (no session goes on unrecorded). A failed file
takes no more data; what reached the disk before stays as it was. A file that cannot even be
created is reported the same way, and its writer raises :class:`RecordingUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from broker import metrics
from broker.errors import RecordingUnavailable

from .jsontext import utf8

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5
_BUFFER_SIZE = 64 * 1024
SYNCFS_FROM = 16  # files on one file system in a round: fewer are fsynced one by one


class FlushedFile:
    """An append-only file written through a buffer that a :class:`Flusher` keeps on disk."""

    def __init__(self, path: Path, flusher: Flusher | None = None, *, mode: int = 0o640) -> None:
        flusher = flusher if flusher is not None else default_flusher()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except OSError as exc:  # no file, no recording: whatever needed it is refused
            metrics.RECORDING_FAILURES.labels("create").inc()
            flusher.report(path, exc)
            raise RecordingUnavailable(exc.strerror or str(exc)) from exc
        self.path = path
        self._file = os.fdopen(fd, "wb", buffering=_BUFFER_SIZE)
        self._unsynced = False
        self.failed: OSError | None = None
        self._flusher = flusher
        self._flusher.register(self)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, text: str) -> None:
        """Append JSON text (every recording file is JSON; see :mod:`.jsontext`)."""
        self.write_bytes(utf8(text))

    def write_bytes(self, data: bytes) -> None:
        """Append UTF-8 JSON text already encoded (:func:`.jsontext.compact`)."""
        if self._file.closed or self.failed is not None:
            return  # sealed (a channel winding down), or failed (the session is being cut)
        try:
            self._file.write(data)
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
        self._syncer = _Syncer()
        weakref.finalize(self, self._syncer.close)

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
        # in a thread: a round that stop() cut short may still hold the syncer (a slow disk)
        await asyncio.to_thread(self._syncer.close)

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
            failures = await asyncio.to_thread(self._syncer.push_and_sync, taken)
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


_Failure = tuple[int, OSError, str]  # (index in the round, error, step)


class _Syncer:
    """A round's pushes and syncs, in the flush thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a round cut short by stop() may still be running
        self._watch: dict[int, int] = {}  # file system (st_dev) -> a directory descriptor

    def push_and_sync(self, taken: list[tuple[FlushedFile, int]]) -> list[_Failure]:
        """Push each file's buffer, sync them, and close the duplicates."""
        failures: list[_Failure] = []
        by_device: dict[int, list[tuple[int, FlushedFile, int]]] = {}
        with self._lock:
            try:
                for index, (file, fd) in enumerate(taken):
                    try:
                        file.push()
                        device = os.fstat(fd).st_dev
                    except OSError as exc:
                        failures.append((index, exc, "flush"))
                        continue
                    by_device.setdefault(device, []).append((index, file, fd))
                for device, files in by_device.items():
                    if len(files) < SYNCFS_FROM or not self._synced_whole(device, files[0][1]):
                        failures.extend(_fsync_each(files))
            finally:
                for _, fd in taken:
                    os.close(fd)
        return failures

    def _synced_whole(self, device: int, file: FlushedFile) -> bool:
        """``syncfs`` of the file system, True when it reported no error (nor any since the
        last round); False also where it cannot be used."""
        if _syncfs is None:
            return False
        watch = self._watch.get(device)
        if watch is None:
            try:
                watch = os.open(file.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return False
            self._watch[device] = watch
        if _syncfs(watch) == 0:
            return True
        log.warning("recording: syncfs reported a write-back error (%s); syncing each file",
                    os.strerror(ctypes.get_errno()))
        return False

    def close(self) -> None:
        with self._lock:
            for fd in self._watch.values():
                os.close(fd)
            self._watch.clear()


def _fsync_each(files: list[tuple[int, FlushedFile, int]]) -> list[_Failure]:
    failures: list[_Failure] = []
    for index, _, fd in files:
        try:
            os.fsync(fd)
        except OSError as exc:
            failures.append((index, exc, "fsync"))
    return failures


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` where it reports write-back errors (Linux 5.8 and later)."""
    system = os.uname()
    release = system.release.split("-")[0].split(".")
    try:
        if system.sysname != "Linux" or tuple(map(int, release[:2])) < (5, 8):
            return None
        name = ctypes.util.find_library("c")
        function = ctypes.CDLL(name, use_errno=True).syncfs if name else None
    except (OSError, AttributeError, ValueError):
        return None
    if function is None:
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_syncfs = _load_syncfs()


_default: Flusher | None = None


def default_flusher() -> Flusher:
    """The process-wide flusher used by writers that are not given one."""
    global _default
    if _default is None:
        _default = Flusher()
    return _default
