"""The order of a session's closing writes, as the disk sees it (fsyncs and renames), so that a
power cut at any point leaves either an unsealed session (sealed again at restart) or a
sealed one whose every byte and name is on disk, and no directory is synced for nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.recording import MANIFEST_FILE, SIGNATURE_FILE, Flusher, SessionRecording, Signer
from broker.recording.manifest import HEAD_FILE
from tests.unit.test_manifest import METADATA, T0

Event = tuple[str, Path]  # ("sync", what) or ("rename", new name)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every fsync (by the path it syncs; a temporary file by the name it is renamed to) and
    every rename, in order."""
    events: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name.startswith(".") and path.name.endswith(".tmp"):  # write_atomically's
            path = path.with_name(path.name[1:].rsplit(".", 2)[0])
        events.append(("sync", path))
        real_fsync(fd)

    def replace(source: str | Path, target: str | Path) -> None:
        real_replace(source, target)
        events.append(("rename", Path(target)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


async def close_a_session(root: Path, signer: Signer | None, disk: list[Event]
                          ) -> tuple[SessionRecording, list[Event]]:
    flusher = Flusher(interval=3600)
    rec = SessionRecording.create(root, "s1", T0, dict(METADATA), flusher=flusher,
                                  signer=signer)
    rec.terminal(0, width=80, height=24, term="xterm", env={}).output(b"$ ")
    rec.exec_log(1, "status").stdout(b"ok\n")
    disk.clear()
    await rec.close("connection closed")
    await flusher.stop()
    return rec, list(disk)


def first(events: list[Event], event: Event) -> int:
    assert event in events, f"{event} never happened: {events}"
    return events.index(event)


def synced_after(events: list[Event], path: Path, start: int, end: int) -> bool:
    return ("sync", path) in events[start + 1:end]


def no_idle_directory_sync(events: list[Event], session: Path) -> None:
    """A directory is synced only after a name in it changed (the session's own name was
    made when it started)."""
    changed = {session.parent}
    for kind, path in events:
        if kind == "rename":
            changed.add(path.parent)
        elif path.is_dir():
            assert path in changed, f"{path} synced with no new name in it: {events}"
            changed.discard(path)


async def test_a_seal_reaches_the_disk_in_an_order_a_power_cut_cannot_break(
        tmp_path: Path, disk: list[Event]) -> None:
    rec, events = await close_a_session(tmp_path, Signer(Ed25519PrivateKey.generate()), disk)
    session, root = rec.path, tmp_path
    manifest = first(events, ("rename", session / MANIFEST_FILE))
    signature = first(events, ("rename", session / SIGNATURE_FILE))
    metadata = first(events, ("rename", session / "session.json"))
    # everything the manifest vouches for is on disk before the manifest's name is
    for data in [p for p in rec.files() if p.name != "session.json"]:
        assert synced_after(events, data, -1, manifest), data
    assert synced_after(events, session / "session.json", -1, metadata)
    assert synced_after(events, session / SIGNATURE_FILE, -1, signature)
    # the signature's and session.json's new names too, and the session's own name
    assert synced_after(events, session, max(signature, metadata), manifest)
    assert synced_after(events, root, -1, manifest)
    # then the manifest's name, and the chain head naming the session
    head = first(events, ("rename", root / HEAD_FILE))
    assert synced_after(events, session, manifest, len(events))
    assert synced_after(events, root, head, len(events))
    no_idle_directory_sync(events, session)


async def test_an_unsealed_session_syncs_its_last_metadata_and_its_name(
        tmp_path: Path, disk: list[Event]) -> None:
    rec, events = await close_a_session(tmp_path, None, disk)
    metadata = first(events, ("rename", rec.path / "session.json"))
    assert synced_after(events, rec.path, metadata, len(events))
    assert ("sync", tmp_path) in events
    assert not (rec.path / MANIFEST_FILE).exists()
    no_idle_directory_sync(events, rec.path)
