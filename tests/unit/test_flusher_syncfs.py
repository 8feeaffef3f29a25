"""A flush round makes many recording files durable with one ``syncfs`` per file system, and
falls back to one fsync per file, which names the failing one, when ``syncfs`` reports an
error. The ``syncfs`` here is the kernel's; only its error is simulated (a real write-back
EIO needs a failing disk), by wrapping the flusher's handle on it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from broker.recording import flusher as flusher_module
from broker.recording.flusher import SYNCFS_FROM, FlushedFile, Flusher

pytestmark = pytest.mark.skipif(flusher_module._syncfs is None,
                                reason="this kernel's syncfs does not report write-back errors")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Every syncfs and fsync the flusher makes, passed on to the kernel; a descriptor listed
    in ``calls["eio"]`` fails its fsync, and ``calls["syncfs_fails"]`` makes syncfs fail."""
    seen: dict[str, list[int]] = {"syncfs": [], "fsync": [], "eio": [], "syncfs_fails": []}
    real_syncfs, real_fsync = flusher_module._syncfs, os.fsync
    assert real_syncfs is not None

    def syncfs(fd: int) -> int:
        seen["syncfs"].append(fd)
        result = real_syncfs(fd)
        return -1 if seen["syncfs_fails"] else result

    def fsync(fd: int) -> None:
        seen["fsync"].append(fd)
        if fd in seen["eio"]:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(flusher_module, "_syncfs", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def files(root: Path, flusher: Flusher, count: int) -> list[FlushedFile]:
    made = [FlushedFile(root / f"{n}.jsonl", flusher) for n in range(count)]
    for n, file in enumerate(made):
        file.write(f"line {n}\n")
    return made


async def test_a_round_of_many_files_is_one_syncfs(tmp_path: Path,
                                                   calls: dict[str, list[int]]) -> None:
    flusher = Flusher(interval=3600)
    made = files(tmp_path, flusher, SYNCFS_FROM + 4)
    assert await flusher.flush_now() == len(made)
    assert len(calls["syncfs"]) == 1 and calls["fsync"] == []
    assert all((tmp_path / f"{n}.jsonl").read_text() == f"line {n}\n" for n in range(len(made)))
    made[0].write("more\n")  # the next round: one file, fsynced on its own
    assert await flusher.flush_now() == 1
    assert len(calls["syncfs"]) == 1 and len(calls["fsync"]) == 1
    for file in made:
        file.close()
    await flusher.stop()


async def test_an_error_from_syncfs_fsyncs_each_file_and_fails_only_the_bad_one(
        tmp_path: Path, calls: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    flusher = Flusher(interval=3600)
    failed: list[tuple[Path, int | None]] = []
    flusher.on_failure(lambda path, exc: failed.append((path, exc.errno)))
    made = files(tmp_path, flusher, SYNCFS_FROM)
    calls["syncfs_fails"].append(1)
    bad = made[3]
    real_dup = os.dup

    def dup(fd: int) -> int:  # the round's duplicate of the bad file fails its fsync
        copy = real_dup(fd)
        if fd == bad._file.fileno():
            calls["eio"].append(copy)
        return copy

    monkeypatch.setattr(os, "dup", dup)
    assert await flusher.flush_now() == SYNCFS_FROM
    monkeypatch.undo()
    assert len(calls["syncfs"]) == 1 and len(calls["fsync"]) == SYNCFS_FROM
    assert failed == [(bad.path, errno.EIO)] and bad.failed is not None
    assert "syncfs reported a write-back error" in caplog.text
    assert all(file.failed is None for file in made if file is not bad)
    for file in made:
        file.close()
    await flusher.stop()


async def test_files_on_two_file_systems_are_synced_each_on_its_own(
        tmp_path: Path, calls: dict[str, list[int]]) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) to write to")
    elsewhere = shm / f"flusher-{os.getpid()}"
    elsewhere.mkdir()
    flusher = Flusher(interval=3600)
    try:
        made = files(tmp_path, flusher, SYNCFS_FROM) + files(elsewhere, flusher, 2)
        assert await flusher.flush_now() == SYNCFS_FROM + 2
        assert len(calls["syncfs"]) == 1 and len(calls["fsync"]) == 2  # too few for syncfs
        for file in made:
            file.close()
    finally:
        await flusher.stop()
        for path in elsewhere.iterdir():
            path.unlink()
        elsewhere.rmdir()


async def test_stop_closes_the_directory_it_kept_open(tmp_path: Path,
                                                      calls: dict[str, list[int]]) -> None:
    flusher = Flusher(interval=3600)
    made = files(tmp_path, flusher, SYNCFS_FROM)
    await flusher.flush_now()
    (watched,) = set(calls["syncfs"])
    assert os.readlink(f"/proc/self/fd/{watched}") == str(tmp_path)
    for file in made:
        file.close()
    await flusher.stop()
    with pytest.raises(OSError):
        os.fstat(watched)
