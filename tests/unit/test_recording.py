"""Session recordings: asciicast/exec writers, crash-safe flushing, reader, replay."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from broker.recording import (
    AsciicastWriter,
    Cast,
    CastError,
    ExecLog,
    Flusher,
    SessionRecording,
    default_flusher,
    frames,
    iter_sessions,
    output_text,
    read_cast,
    replay,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def flusher():
    # A long interval: tests that need the periodic task make their own flusher.
    f = Flusher(interval=3600)
    yield f
    await f.stop()


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# Makes stdin (a pty) the controlling terminal of the new session, then runs the command.
_WITH_CONTROLLING_TTY = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
)


def asciinema_cat(path: Path) -> bytes:
    """What the stock player prints for ``path`` (it insists on a controlling terminal)."""
    exe = shutil.which("asciinema")
    if exe is None:
        pytest.skip("asciinema is not on PATH (apt-get install asciinema) to check compatibility")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-c", _WITH_CONTROLLING_TTY, exe, "cat", str(path)],
            stdin=terminal,
            capture_output=True,
            start_new_session=True,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
            timeout=60,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


# --- asciicast ------------------------------------------------------------------------------


async def test_stock_asciinema_plays_back_exactly_the_output_bytes(tmp_path, flusher):
    chunks = [
        b"\x1b[1;32muser@pump\x1b[0m:~$ ",
        b'echo "quotes" \\ back\tslash\r\n',
        b"caf\xc3",  # "é" split across two chunks
        b"\xa9 \xe2\x82\xac \xf0\x9f\x92",  # "€", then half of an emoji
        b"\x89\r\n\x07\x00end\r\n",
    ]
    clock = FakeClock()
    writer = AsciicastWriter(tmp_path / "t.cast", width=80, height=24, clock=clock, flusher=flusher)
    for i, chunk in enumerate(chunks):
        clock.advance(0.25)
        writer.output(chunk)
        if i == 1:
            writer.input(b"ls -l\r")
            writer.resize(120, 40)
    writer.close()

    assert asciinema_cat(tmp_path / "t.cast") == b"".join(chunks)


async def test_header_carries_terminal_and_broker_fields(tmp_path, flusher):
    writer = AsciicastWriter(
        tmp_path / "h.cast",
        width=132,
        height=43,
        timestamp=1_700_000_000,
        env={"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        title="alice@pump-7",
        command="top",
        extra={"broker": {"technician": "alice", "device": "pump-7", "grant": "g1"}},
        flusher=flusher,
    )
    writer.close()
    header = json.loads(lines(tmp_path / "h.cast")[0])
    assert header == {
        "version": 2,
        "width": 132,
        "height": 43,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        "title": "alice@pump-7",
        "command": "top",
        "broker": {"technician": "alice", "device": "pump-7", "grant": "g1"},
    }


async def test_input_output_and_resize_events_with_monotonic_times(tmp_path, flusher):
    clock = FakeClock(50.0)
    writer = AsciicastWriter(tmp_path / "e.cast", width=80, height=24, clock=clock, flusher=flusher)
    clock.advance(0.1234567)
    writer.output(b"$ ")
    clock.advance(1.0)
    writer.input(b"ls\r")
    clock.advance(0.5)
    writer.resize(100, 30)
    writer.close()

    assert lines(tmp_path / "e.cast")[1:] == [
        '[0.123457, "o", "$ "]',
        '[1.123457, "i", "ls\\r"]',
        '[1.623457, "r", "100x30"]',
    ]
    cast = read_cast(tmp_path / "e.cast")
    assert cast.events == [
        (0.123457, "o", "$ "),
        (1.123457, "i", "ls\r"),
        (1.623457, "r", "100x30"),
    ]
    assert not cast.truncated


async def test_utf8_split_across_chunks_survives_in_each_direction(tmp_path, flusher):
    writer = AsciicastWriter(tmp_path / "u.cast", width=80, height=24, flusher=flusher)
    writer.output(b"\xc3")  # first half of "é"...
    writer.input(b"\xe2\x82")  # ...interleaved with the first two thirds of "€"
    writer.output(b"\xa9!")
    writer.input(b"\xac")
    writer.output(b"\xf0\x9f")  # never finished: becomes U+FFFD at close
    writer.close()

    cast = read_cast(tmp_path / "u.cast")
    assert output_text(cast) == "é!\ufffd"
    assert [data for _, code, data in cast.events if code == "i"] == ["€"]


async def test_writes_stay_buffered_until_flushed(tmp_path, flusher):
    writer = AsciicastWriter(tmp_path / "b.cast", width=80, height=24, flusher=flusher)
    for _ in range(100):
        writer.output(b"x" * 100)
    assert (tmp_path / "b.cast").stat().st_size == 0  # no write(2) per chunk
    writer.close()
    assert len(read_cast(tmp_path / "b.cast").events) == 100


# --- reader ---------------------------------------------------------------------------------


async def test_reader_skips_a_truncated_last_line(tmp_path, flusher):
    clock = FakeClock()
    writer = AsciicastWriter(tmp_path / "c.cast", width=80, height=24, clock=clock, flusher=flusher)
    for text in (b"one\r\n", b"two\r\n", "thr\u00e9e\r\n".encode()):
        clock.advance(1)
        writer.output(text)
    writer.close()
    data = (tmp_path / "c.cast").read_bytes()
    full = read_cast(tmp_path / "c.cast")
    assert len(full.events) == 3 and not full.truncated

    # A crash may cut the file anywhere after the header: always a prefix of the events.
    header_end = data.index(b"\n") + 1
    cut_path = tmp_path / "cut.cast"
    for cut in range(header_end, len(data)):
        cut_path.write_bytes(data[:cut])
        cast = read_cast(cut_path)
        assert cast.header == full.header
        assert cast.events == full.events[: len(cast.events)]
        at_line_end = data[cut - 1 : cut] == b"\n" or data[cut : cut + 1] == b"\n"
        assert cast.truncated == (not at_line_end), cut


def test_reader_rejects_damage_before_the_last_line(tmp_path):
    path = tmp_path / "bad.cast"
    path.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "a"\n[0.2, "o", "b"]\n')
    with pytest.raises(CastError, match=r"bad\.cast:2"):
        read_cast(path)
    path.write_text('{"version": 1}\n')
    with pytest.raises(CastError, match="v2"):
        read_cast(path)


# --- exec log -------------------------------------------------------------------------------


async def test_exec_log_lines(tmp_path, flusher):
    clock = FakeClock()
    log = ExecLog(tmp_path / "x.jsonl", "cat /etc/os-release", clock=clock, flusher=flusher)
    clock.advance(0.5)
    log.stdout(b"NAME=\xc3")
    clock.advance(0.25)
    log.stdout(b"\xa9\n")
    log.stderr(b"warning\n")
    log.stdin(b"y\n")
    log.stdout(b"\x1f\x8b\xff\x00")  # not UTF-8: kept byte for byte
    clock.advance(0.25)
    log.exit(3)
    log.close()

    assert [json.loads(line) for line in lines(tmp_path / "x.jsonl")] == [
        {"t": 0.0, "type": "command", "command": "cat /etc/os-release"},
        {"t": 0.5, "type": "stdout", "data": "NAME="},
        {"t": 0.75, "type": "stdout", "data": "é\n"},
        {"t": 0.75, "type": "stderr", "data": "warning\n"},
        {"t": 0.75, "type": "stdin", "data": "y\n"},
        {"t": 0.75, "type": "stdout", "b64": base64.b64encode(b"\x1f\x8b\xff\x00").decode()},
        {"t": 1.0, "type": "exit", "status": 3},
    ]


async def test_exec_log_exit_by_signal(tmp_path, flusher):
    log = ExecLog(tmp_path / "s.jsonl", "sleep 100", clock=FakeClock(), flusher=flusher)
    log.exit(None, "TERM")
    log.close()
    assert json.loads(lines(tmp_path / "s.jsonl")[-1]) == {
        "t": 0.0,
        "type": "exit",
        "signal": "TERM",
    }


# --- flusher --------------------------------------------------------------------------------


async def test_flusher_makes_data_visible_on_disk_without_close(tmp_path):
    flusher = Flusher(interval=0.05)
    await flusher.start()
    try:
        writer = AsciicastWriter(tmp_path / "f.cast", width=80, height=24, flusher=flusher)
        writer.output(b"visible before close")
        path = tmp_path / "f.cast"
        assert path.stat().st_size == 0
        deadline = time.monotonic() + 1.0
        while b"visible before close" not in path.read_bytes():
            assert time.monotonic() < deadline, "not flushed within a second"
            await asyncio.sleep(0.01)
        assert output_text(read_cast(path)) == "visible before close"
        writer.close()
    finally:
        await flusher.stop()


async def test_one_flusher_task_for_many_writers(tmp_path):
    flusher = Flusher(interval=0.05)
    before = len(asyncio.all_tasks())
    writers = [
        AsciicastWriter(tmp_path / f"{i}.cast", width=80, height=24, flusher=flusher)
        for i in range(20)
    ]
    for writer in writers:
        writer.output(b"data")
    assert len(asyncio.all_tasks()) == before + 1  # started by the first registration
    await asyncio.sleep(0.2)
    assert all(b"data" in (tmp_path / f"{i}.cast").read_bytes() for i in range(20))
    for writer in writers:
        writer.close()
    await flusher.stop()
    assert len(asyncio.all_tasks()) == before


async def test_fsync_only_for_files_written_since_last_round(tmp_path, flusher, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    a = ExecLog(tmp_path / "a.jsonl", "a", flusher=flusher)
    b = ExecLog(tmp_path / "b.jsonl", "b", flusher=flusher)

    assert await flusher.flush_now() == 2 and len(synced) == 2
    assert await flusher.flush_now() == 0 and len(synced) == 2
    a.stdout(b"more")
    assert await flusher.flush_now() == 1 and len(synced) == 3
    assert b"more" in (tmp_path / "a.jsonl").read_bytes()
    a.close()
    b.close()
    assert await flusher.flush_now() == 0


async def test_stop_flushes_a_last_time(tmp_path):
    flusher = Flusher(interval=3600)
    log = ExecLog(tmp_path / "l.jsonl", "uptime", flusher=flusher)
    log.stdout(b"up 3 days")
    assert (tmp_path / "l.jsonl").stat().st_size == 0
    await flusher.stop()
    assert b"up 3 days" in (tmp_path / "l.jsonl").read_bytes()
    log.close()


async def test_writers_without_a_flusher_use_the_process_default(tmp_path):
    default = default_flusher()
    assert default is default_flusher()
    log = ExecLog(tmp_path / "d.jsonl", "id")
    try:
        assert await default.flush_now() == 1
        assert b'"id"' in (tmp_path / "d.jsonl").read_bytes()
    finally:
        log.close()
        await default.stop()


# --- session --------------------------------------------------------------------------------

METADATA = {
    "technician": "alice",
    "vendor": "Acme Infusion",
    "device": "pump-7",
    "grant": "g-42",
    "client": "203.0.113.9:50522",
}


async def test_session_directory_metadata_and_close(tmp_path, flusher):
    started = datetime(2024, 3, 5, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))
    ended = datetime(2024, 3, 5, 0, 30, 0, tzinfo=UTC)
    root = tmp_path / "recordings"
    umask = os.umask(0o077)  # the directory mode must not depend on the umask
    try:
        rec = SessionRecording.create(
            root, "s1", started, dict(METADATA), flusher=flusher, now=lambda: ended
        )
    finally:
        os.umask(umask)

    assert rec.path == root / "20240304T230203Z-s1"
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o750
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta == {
        **METADATA,
        "session": "s1",
        "started_at": "2024-03-04T23:02:03+00:00",
        "ended_at": None,
        "end_reason": None,
    }

    term = rec.terminal(0, width=80, height=24, term="xterm", env={"SHELL": "/bin/sh", "X": "y"})
    term.output(b"hello")
    exe = rec.exec_log(1, "uname -a")
    exe.stdout(b"Linux\n")
    again = rec.terminal(0, width=80, height=24, term="vt100", env={}, command="top")
    await rec.close("grant expired")

    assert [p.name for p in rec.files()] == [
        "session.json",
        "term-0.cast",
        "exec-1.jsonl",
        "term-0-2.cast",
    ]
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["ended_at"] == "2024-03-05T00:30:00+00:00"
    assert meta["end_reason"] == "grant expired"
    assert meta["started_at"] == "2024-03-04T23:02:03+00:00"
    assert not list(rec.path.glob(".*"))  # no temporary file left behind

    cast = read_cast(term.path)  # closed by the session: everything on disk
    assert output_text(cast) == "hello"
    assert cast.header["env"] == {"TERM": "xterm", "SHELL": "/bin/sh", "X": "y"}  # as given
    assert cast.header["title"] == "alice@pump-7"
    assert cast.header["timestamp"] == int(ended.timestamp())
    assert cast.header["broker"] == {
        "technician": "alice",
        "vendor": "Acme Infusion",
        "device": "pump-7",
        "grant": "g-42",
        "session": "s1",
        "channel": 0,
    }
    assert read_cast(again.path).header["command"] == "top"
    assert b"Linux" in exe.path.read_bytes()


def test_session_refuses_unsafe_ids_and_naive_times(tmp_path):
    now = datetime.now(UTC)
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="session id"):
            SessionRecording.create(tmp_path, bad, now, {})
    with pytest.raises(ValueError, match="timezone"):
        SessionRecording.create(tmp_path, "s", datetime(2024, 1, 1), {})
    assert list(tmp_path.iterdir()) == []


async def test_directory_names_sort_by_time(tmp_path, flusher):
    base = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    plus_one = timezone(timedelta(hours=1))
    # Created out of order, some in a local zone; ids chosen so that id order is wrong.
    starts = {
        "zz-first": base - timedelta(days=400),
        "aa-second": (base - timedelta(hours=5)).astimezone(plus_one),
        "mm-third": base,
        "bb-fourth": (base + timedelta(seconds=1)).astimezone(plus_one),
    }
    for session_id in ("mm-third", "bb-fourth", "zz-first", "aa-second"):
        rec = SessionRecording.create(tmp_path, session_id, starts[session_id], {}, flusher=flusher)
        if session_id != "mm-third":
            await rec.close("disconnected")
    in_time_order = ["zz-first", "aa-second", "mm-third", "bb-fourth"]

    assert [name.split("-", 1)[1] for name in sorted(os.listdir(tmp_path))] == in_time_order
    sessions = list(iter_sessions(tmp_path))
    assert [s.session_id for s in sessions] == in_time_order
    assert [s.started_at for s in sessions] == [starts[i] for i in in_time_order]
    assert [s.end_reason for s in sessions] == [
        "disconnected",
        "disconnected",
        None,
        "disconnected",
    ]
    assert sessions[2].ended_at is None
    assert sessions[0].ended_at is not None


# --- replay ---------------------------------------------------------------------------------

CAST = Cast(
    header={"version": 2, "width": 80, "height": 24},
    events=[
        (0.5, "o", "a"),
        (0.7, "i", "typed"),
        (1.0, "o", "b"),
        (11.0, "r", "100x30"),
        (11.0, "o", "c"),
        (20.0, "o", "\u00e9"),
    ],
)


@pytest.mark.parametrize(
    ("speed", "max_idle", "delays"),
    [
        (1.0, None, [0.5, 0.5, 10.0, 9.0]),
        (1.0, 2.0, [0.5, 0.5, 2.0, 2.0]),
        (2.0, 2.0, [0.25, 0.25, 1.0, 1.0]),
        (0.5, 1.0, [1.0, 1.0, 2.0, 2.0]),
    ],
)
async def test_replay_timing_with_speed_and_idle_cap(speed, max_idle, delays):
    slept: list[float] = []
    out = io.BytesIO()
    written_at_each_sleep: list[bytes] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        written_at_each_sleep.append(out.getvalue())

    await replay(CAST, out, speed=speed, max_idle=max_idle, sleep=fake_sleep)

    assert slept == pytest.approx(delays)
    assert out.getvalue() == "abcé".encode()
    assert written_at_each_sleep == [b"", b"a", b"ab", b"abc"]  # each frame after its delay


def test_frames_refuse_a_non_positive_speed():
    with pytest.raises(ValueError, match="speed"):
        list(frames(CAST, speed=0))


async def test_replay_of_a_recorded_file(tmp_path, flusher):
    clock = FakeClock()
    writer = AsciicastWriter(tmp_path / "r.cast", width=80, height=24, clock=clock, flusher=flusher)
    for chunk in (b"first ", b"second"):
        clock.advance(3.0)
        writer.output(chunk)
    writer.close()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    out = io.BytesIO()
    await replay(read_cast(tmp_path / "r.cast"), out, max_idle=2.5, sleep=fake_sleep)
    assert out.getvalue() == b"first second"
    assert slept == pytest.approx([2.5, 2.5])


def test_six_decimal_times_on_disk(tmp_path):
    # Outside an event loop: the flusher cannot run, close() still writes everything.
    clock = FakeClock()
    writer = AsciicastWriter(tmp_path / "d.cast", width=1, height=1, clock=clock, flusher=Flusher())
    clock.advance(2)
    writer.output(b"x")
    writer.close()
    assert re.fullmatch(r'\[2\.000000, "o", "x"\]', lines(tmp_path / "d.cast")[1])
