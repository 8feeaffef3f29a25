"""Recording storage that fails (ENOSPC, EROFS, EIO): the failure reaches the flusher's
listeners once per file, the failed file takes no more data, and a seal that cannot be
completed is undone so that the chain of sealed sessions stays whole."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker import metrics
from broker.errors import RecordingUnavailable, SessionRefused
from broker.recording import (
    MANIFEST_FILE,
    FlushedFile,
    Flusher,
    SessionRecording,
    Signer,
    seal_directory,
    verify_all,
)
from broker.recording import manifest as manifest_module
from broker.recording.har import BodyCapture, body_fields
from broker.recording.manifest import HEAD_FILE
from tests.unit.test_manifest import T0, record


def full_disk(buffered: bool) -> io.RawIOBase | io.BufferedWriter:
    """A real file on which every write fails with ENOSPC (``/dev/full``): unbuffered, a
    write fails at once (a buffer that was full); buffered, the flush does."""
    return open("/dev/full", "wb", buffering=64 * 1024 if buffered else 0)


async def test_a_failing_write_reaches_the_listeners_once(tmp_path: Path) -> None:
    flusher = Flusher(interval=3600)
    failures: list[tuple[Path, int | None]] = []
    flusher.on_failure(lambda path, exc: failures.append((path, exc.errno)))
    file = FlushedFile(tmp_path / "out.jsonl", flusher)
    file.write("kept\n")
    assert await flusher.flush_now() == 1
    file._file.close()
    file._file = full_disk(buffered=False)  # type: ignore[assignment]
    file.write("lost\n")
    file.write("lost too\n")  # dropped: the file failed already
    assert failures == [(tmp_path / "out.jsonl", errno.ENOSPC)]
    assert await flusher.flush_now() == 0
    file.close()
    assert failures == [(tmp_path / "out.jsonl", errno.ENOSPC)]
    assert (tmp_path / "out.jsonl").read_text() == "kept\n"
    await flusher.stop()


async def test_a_file_that_cannot_be_created_is_reported_counted_and_refused(
        tmp_path: Path) -> None:
    """No inode, a read-only or a vanished directory: the writer cannot exist, so whatever
    needed it is refused (RecordingUnavailable, one line), the listeners hear of it like a
    failed write, and the metric counts it under step "create"."""
    flusher = Flusher(interval=3600)
    failures: list[tuple[Path, int | None]] = []
    flusher.on_failure(lambda path, exc: failures.append((path, exc.errno)))
    created = metrics.RECORDING_FAILURES.labels("create")
    before = created._value.get()
    gone = tmp_path / "removed-session" / "exec-0.jsonl"
    with pytest.raises(RecordingUnavailable) as refused:
        FlushedFile(gone, flusher)
    assert str(refused.value) == (
        "this cannot be recorded right now (No such file or directory), and nothing goes"
        " through the broker unrecorded; try again later or tell the hospital's IT")
    assert refused.value.reason == "recording-unavailable"
    assert isinstance(refused.value, SessionRefused)
    assert str(tmp_path) not in str(refused.value)
    assert failures == [(gone, errno.ENOENT)]
    assert created._value.get() == before + 1
    assert not flusher.running  # nothing was registered
    await flusher.stop()


async def test_a_failing_flush_reaches_the_listeners_from_the_flush_thread(
        tmp_path: Path) -> None:
    flusher = Flusher(interval=3600)
    failures: list[tuple[Path, int | None]] = []
    flusher.on_failure(lambda path, exc: failures.append((path, exc.errno)))
    file = FlushedFile(tmp_path / "out.jsonl", flusher)
    file.write("x")
    file._file.close()
    file._file = full_disk(buffered=True)  # type: ignore[assignment]
    file.write("y")  # buffered: nothing fails yet
    assert failures == []
    await flusher.flush_now()
    assert failures == [(tmp_path / "out.jsonl", errno.ENOSPC)] and file.failed is not None
    with contextlib.suppress(OSError):  # the buffer still holds what /dev/full refused
        file.close()
    await flusher.stop()


async def test_a_round_pushes_in_its_thread_and_a_close_meanwhile_loses_nothing(
        tmp_path: Path) -> None:
    """Writes keep their order while a round pushes in its thread: the writer appends and
    closes during the round, and the file holds everything in order."""
    flusher = Flusher(interval=3600)
    files = [FlushedFile(tmp_path / f"f{i}", flusher) for i in range(200)]
    for round_ in range(5):
        for i, file in enumerate(files):
            file.write(f"{round_}:{i}\n")
        pushing = asyncio.ensure_future(flusher.flush_now())
        await asyncio.sleep(0)  # the round has taken its files and is in its thread
        for i, file in enumerate(files):
            file.write(f"{round_}:{i}+\n")
        if round_ == 4:
            for file in files:
                file.close()
        assert await pushing == 200
    for i in range(200):
        assert (tmp_path / f"f{i}").read_text() == "".join(
            f"{r}:{i}\n{r}:{i}+\n" for r in range(5))
    await flusher.stop()


async def test_a_seal_without_its_chain_head_is_undone(tmp_path: Path, monkeypatch:
                                                       pytest.MonkeyPatch) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    flusher = Flusher(interval=3600)
    await record(tmp_path, "s1", signer, flusher)
    head = (tmp_path / HEAD_FILE).read_bytes()
    second = await record(tmp_path, "s2", None, flusher)  # closed, not yet sealed

    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module, "write_head", full)
    with pytest.raises(OSError):
        seal_directory(second.path, signer)
    assert not (second.path / MANIFEST_FILE).exists()  # not half sealed
    assert (tmp_path / HEAD_FILE).read_bytes() == head
    assert not [p for p in second.path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert seal_directory(second.path, signer)  # the disk recovered
    assert verify_all(tmp_path, signer.public_key) == {"s1": [], "s2": []}
    await flusher.stop()


async def test_close_on_a_failing_disk_reports_and_does_not_raise(tmp_path: Path,
                                                                  monkeypatch:
                                                                  pytest.MonkeyPatch) -> None:
    flusher = Flusher(interval=3600)
    failures: list[Path] = []
    flusher.on_failure(lambda path, exc: failures.append(path))
    rec = SessionRecording.create(tmp_path, "s3", T0, {"technician": "a"}, flusher=flusher)

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec, "_finish", full)
    await rec.close("done")
    assert failures == [rec.path / "session.json"]
    assert json.loads((rec.path / "session.json").read_text())["ended_at"] is None
    await flusher.stop()


def test_a_body_spill_that_cannot_be_kept_at_its_end_is_reported_and_marked_lost(
        tmp_path: Path) -> None:
    """The spill was written, but renaming it into bodies/ fails (the directory takes no new
    entry): the listeners hear of it, and the result says the body was lost instead of
    naming a file that is not there."""
    reported: list[tuple[Path, int | None]] = []
    bodies = tmp_path / "bodies"
    capture = BodyCapture(bodies, 4, lambda path, exc: reported.append((path, exc.errno)))
    capture.feed(b"more than four bytes")
    subprocess.run(["chattr", "+i", str(bodies)], check=True)
    try:
        result = capture.finish()
    finally:
        subprocess.run(["chattr", "-i", str(bodies)], check=True)
    assert reported == [(bodies, errno.EPERM)]
    assert result["lost"] == "Operation not permitted"
    assert result["file"] is None and result["inline"] is None and result["size"] == 20
    assert body_fields(result, "application/octet-stream") == {
        "mimeType": "application/octet-stream", "_lost": "Operation not permitted",
        "_size": 20, "_sha256": result["sha256"]}


def test_a_body_spill_that_cannot_be_made_refuses_every_later_chunk(tmp_path: Path) -> None:
    reported: list[tuple[Path, int | None]] = []
    session = tmp_path / "session"
    session.mkdir()
    capture = BodyCapture(session / "bodies", 4,
                          lambda path, exc: reported.append((path, exc.errno)))
    subprocess.run(["chattr", "+i", str(session)], check=True)  # no bodies/ can be made
    try:
        capture.feed(b"four")  # in memory: nothing to make yet
        with pytest.raises(RecordingUnavailable, match=r"\(Operation not permitted\)"):
            capture.feed(b" and more")
        with pytest.raises(RecordingUnavailable):  # nothing after a loss goes on either
            capture.feed(b"later")
    finally:
        subprocess.run(["chattr", "-i", str(session)], check=True)
    assert reported == [(session / "bodies", errno.EPERM)]
    assert capture.finish()["lost"] == "Operation not permitted"
    assert list(session.iterdir()) == []
