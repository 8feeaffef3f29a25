"""broker.recording.files: the one way the player, Watch, search and replay find a session's
recorded files."""

from __future__ import annotations

from pathlib import Path

from broker.recording.files import REPLAYED, TERMINALS, Kind, recorded_file, recorded_files


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text("x")


def test_channel_order_then_the_web_log_and_nothing_else(tmp_path: Path) -> None:
    _touch(tmp_path, "term-10.cast", "exec-2.jsonl", "sftp-2-2.jsonl", "term-0.cast",
           "web.har", "session.json", "manifest.json", "manifest.sig", ".session.json.1.tmp",
           "term-x.cast", "term-1.jsonl", "scp-3.cast", "web-1.har", "notes.txt")
    (tmp_path / "forward-4.jsonl").mkdir()  # not a file
    found = recorded_files(tmp_path)
    assert [f.name for f in found] == ["term-0.cast", "exec-2.jsonl", "sftp-2-2.jsonl",
                                       "term-10.cast", "web.har"]
    assert [f.channel for f in found] == [0, 2, 2, 10, None]
    assert [f.kind for f in found] == [Kind.TERMINAL, Kind.EXEC, Kind.SFTP, Kind.TERMINAL,
                                       Kind.WEB]


def test_filters_by_kind_and_channel(tmp_path: Path) -> None:
    _touch(tmp_path, "term-0.cast", "term-3.cast", "exec-3.jsonl", "websocket-1.jsonl",
           "web.har")
    assert [f.name for f in recorded_files(tmp_path, kinds=TERMINALS)] == [
        "term-0.cast", "term-3.cast"]
    assert [f.name for f in recorded_files(tmp_path, channel=3)] == [
        "exec-3.jsonl", "term-3.cast"]
    assert "websocket-1.jsonl" not in [f.name for f in recorded_files(tmp_path,
                                                                       kinds=REPLAYED)]
    assert recorded_files(tmp_path / "absent") == []


def test_symlinks_are_not_recordings(tmp_path: Path) -> None:
    (tmp_path / "term-0.cast").symlink_to("/etc/passwd")
    assert recorded_files(tmp_path) == []


def test_names_round_trip_through_the_session_writer(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from broker.recording import SessionRecording

    recording = SessionRecording.create(tmp_path, "s1", datetime(2026, 12, 4, tzinfo=UTC),
                                        {"technician": "t", "device": "d"})
    paths = [recording.file_for(kind, 1 if kind is not Kind.WEB else None) for kind in Kind]
    paths.append(recording.file_for(Kind.SFTP, 1))  # a channel number used again
    for path in paths:
        path.write_text("x")
        recorded = recorded_file(path)
        assert recorded is not None, path.name
    assert paths[-1].name == "sftp-1-2.jsonl"
    assert len(recorded_files(recording.path)) == len(paths)
