"""Fail closed on recording storage, on a real, small tmpfs: a session whose recording can no
longer be written is cut within about a second with one line, and with it every other session
(an idle one too: its recording is on the same full disk), new sessions are refused with
one line while the directory takes no writes, and once space is free sessions work again and
every recording, the cut one included, verifies."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, mount_tmpfs, unmount
from tests.integration.test_drain import readyz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # loaded hosts are slow
# ends when its output is gone (base64 dies of SIGPIPE): a cut session leaves no loop behind
PUSH = "while head -c 15000 /dev/urandom | base64; do sleep 0.05; done"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mount_tmpfs(mount, "size=2m")
    try:
        yield mount
    finally:
        unmount(mount)


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def session_id(directory: Path) -> str:
    return directory.name.split("-", 1)[1]


def test_a_full_recordings_disk_cuts_and_refuses_until_space_is_free(
        tmp_path: Path, small_disk: Path, sshd_device: SshdDevice) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_RECORDING_DIR"] = str(small_disk / "recordings")
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * 600_000)  # what the operator frees later
    broker.one_grant(sshd_device)
    broker.serve()
    try:
        assert broker.ssh("tech+dev", "echo first").out == "first\n"
        first = sorted(p for p in (small_disk / "recordings").iterdir() if p.is_dir())[0]

        idle = subprocess.Popen([*broker.ssh_args("tech+dev", "tech"), "sleep 120"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(broker.cli_json("session", "list")) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        pusher = subprocess.Popen([*broker.ssh_args("tech+dev", "tech"), PUSH],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        full_at = None
        deadline = time.monotonic() + 30
        while pusher.poll() is None and time.monotonic() < deadline:
            if full_at is None and free_bytes(small_disk) < 64 * 1024:
                full_at = time.monotonic()
            time.sleep(0.02)
        cut_at = time.monotonic()
        assert pusher.poll() is not None, "the session was not cut"
        pusher.kill()
        assert full_at is not None and cut_at - full_at < 1.5, (full_at, cut_at)
        err = pusher.communicate()[1]
        lines = [line for line in err.splitlines() if line.startswith("broker:")]
        assert len(lines) == 1, err
        assert "recording cannot be written (No space left on device)" in lines[0]
        assert pusher.returncode == 1
        # the idle session writes nothing, yet its recording is on the same full disk
        idle_err = idle.communicate(timeout=2)[1]
        idle_lines = [line for line in idle_err.splitlines() if line.startswith("broker:")]
        assert idle_lines == ["broker: the broker cannot write session recordings (No space"
                              " left on device), and no session goes on unrecorded;"
                              " the session is closed."], idle_err

        status, body = readyz(broker)
        assert status == 503 and any(p.startswith("recordings:") for p in body["problems"])
        refused = broker.ssh("tech+dev", "echo refused")
        assert refused.code == 1 and refused.out == ""
        assert refused.err.count("\n") == 1, refused.err
        assert refused.err.startswith("broker: this broker node cannot record sessions right"
                                      " now (No space left on device)")

        ballast.unlink()  # space again
        time.sleep(1.5)
        assert readyz(broker)[0] == 200
        again = broker.ssh("tech+dev", "echo after")
        assert again.code == 0 and again.out == "after\n", again.err

        assert broker.cli("recordings", "verify", session_id(first)).out.strip() == "ok"
        verified = broker.cli("recordings", "verify", "--all", check=False)
        assert verified.code == 0, verified.out + verified.err
        events = [e for e in map(json.loads, broker.cli(
            "audit", "export", "--format", "jsonl").out.splitlines())
            if e["kind"] == "recording.failed"]
        assert events and events[0]["data"]["error"] == "No space left on device"
        assert events[0]["data"]["session_cut"] is True
        assert events[0]["data"]["others_cut"] == 1
        assert "recording failed; cutting its session" in broker.serve_log()
    finally:
        broker.stop()


def fill(disk: Path) -> Path:
    """Fill the disk to its last byte with one file (to be removed to free it)."""
    ballast = disk / "filler"
    with ballast.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    with contextlib.suppress(OSError), ballast.open("ab") as out:
        while True:
            out.write(b"\0")
            out.flush()
    return ballast


def test_a_disk_that_fills_between_two_sessions_refuses_the_second(
        tmp_path: Path, small_disk: Path, sshd_device: SshdDevice) -> None:
    """No live session sees the disk fill; the next session (whose node's last probe may
    still stand) is refused with one line all the same, and sessions open once it is freed."""
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_RECORDING_DIR"] = str(small_disk / "recordings")
    broker.one_grant(sshd_device)
    broker.serve()
    try:
        assert broker.ssh("tech+dev", "echo first").out == "first\n"
        ballast = fill(small_disk)
        for _ in range(2):  # at once (the last probe stands) and again (probed anew)
            refused = broker.ssh("tech+dev", "echo refused")
            assert refused.code == 1 and refused.out == ""
            assert refused.err.count("\n") == 1, refused.err
            assert refused.err.startswith("broker: this broker node cannot record sessions"
                                          " right now (No space left on device)"), refused.err
        assert "refusing new sessions" in broker.serve_log()
        ballast.unlink()
        again = broker.ssh("tech+dev", "echo after")
        assert again.code == 0 and again.out == "after\n", again.err
        deadline = time.monotonic() + 10  # a seal the full disk stopped is redone each second
        while (verified := broker.cli("recordings", "verify", "--all", check=False)).code:
            assert time.monotonic() < deadline, verified.out + verified.err
            time.sleep(0.5)
    finally:
        broker.stop()
