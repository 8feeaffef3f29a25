"""Fail closed on recording storage, besides a disk out of bytes (test_storage_fail_closed):
a file system out of inodes (bytes left, but no file can be created) and one mounted
read-only. A new channel on a live connection, whose file cannot be created, is refused with
one line like a new session, the failure is audited and counted and cuts the node's live
sessions, and once the storage takes writes again sessions open and every recording
verifies."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import (
    BrokerProcess,
    SshdDevice,
    mount_tmpfs,
    unmount,
    wait_for_port,
)
from tests.integration.test_drain import readyz
from tests.integration.test_metrics import scrape, value
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
NO_RECORDING = ("broker: this cannot be recorded right now (No space left on device), and"
                " nothing goes through the broker unrecorded; try again later or tell the"
                " hospital's IT")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    yield mount
    unmount(mount)


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def use_up_inodes(directory: Path) -> list[Path]:
    made = []
    for n in range(100_000):
        path = directory / f"filler-{n}"
        try:
            path.touch()
        except OSError:
            return made
        made.append(path)
    raise AssertionError("the tmpfs never ran out of inodes")


def broker_on(tmp_path: Path, recordings: Path, device: SshdDevice) -> BrokerProcess:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_RECORDING_DIR"] = str(recordings)
    broker.one_grant(device)
    return broker.serve()


def wait_for_live_sessions(broker: BrokerProcess, count: int) -> None:
    deadline = time.monotonic() + 20
    while len(broker.cli_json("session", "list")) < count:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the session never went live"
        time.sleep(0.1)


def broker_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("broker:")]


def assert_new_sessions_refused(broker: BrokerProcess, error: str) -> None:
    refused = broker.ssh("tech+dev", "echo refused")
    assert refused.code == 1 and refused.out == ""
    assert broker_lines(refused.err) == [
        f"broker: this broker node cannot record sessions right now ({error}); no session"
        " opens unrecorded, so try again later or tell the hospital's IT"], refused.err


def audited(broker: BrokerProcess, kind: str) -> list[dict]:
    events = map(json.loads, broker.cli("audit", "export", "--format", "jsonl").out.splitlines())
    return [e for e in events if e["kind"] == kind]


def verify_all_within(broker: BrokerProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds  # a seal the storage stopped is redone each second
    while (verified := broker.cli("recordings", "verify", "--all", check=False)).code:
        assert time.monotonic() < deadline, verified.out + verified.err
        time.sleep(0.5)


def test_out_of_inodes_a_new_channel_on_a_live_connection_is_refused_and_cuts(
        tmp_path: Path, disk: Path, sshd_device: SshdDevice) -> None:
    mount_tmpfs(disk, "size=64m,nr_inodes=400")
    broker = broker_on(tmp_path, disk / "recordings", sshd_device)
    control = tmp_path / "mux"
    master = None
    try:
        assert broker.ssh("tech+dev", "echo first").out == "first\n"
        master = subprocess.Popen(  # one connection; later channels share it
            [*broker.ssh_args("tech+dev", "tech"), "-o", "ControlMaster=yes",
             "-o", f"ControlPath={control}", "sleep 120"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_live_sessions(broker, 1)
        fillers = use_up_inodes(disk)  # bytes to spare: the open recording still writes

        second = subprocess.run(
            [*broker.ssh_args("tech+dev", "tech"), "-o", "ControlMaster=no",
             "-o", f"ControlPath={control}", "echo second"],
            capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and second.stdout == "", second
        assert broker_lines(second.stderr) == [NO_RECORDING], second.stderr
        # its recording's storage fails: the live session is cut, with its one line
        master_err = master.communicate(timeout=10)[1]
        assert broker_lines(master_err) == [
            "broker: this session's recording cannot be written (No space left on device),"
            " and no session goes on unrecorded; the session is closed."], master_err

        assert_new_sessions_refused(broker, "No space left on device")
        status, body = readyz(broker)
        assert status == 503 and body["problems"] == [
            "recordings: the directory does not take writes (No space left on device)"]
        failed = audited(broker, "recording.failed")
        assert failed and failed[0]["data"]["error"] == "No space left on device"
        assert failed[0]["data"]["session_cut"] is True
        refusals = [e["data"]["reason"] for e in audited(broker, "session.refused")]
        assert refusals.count("recording-unavailable") == 2, refusals
        assert value(scrape(broker), "broker_recording_write_failures_total", step="create") >= 1

        for path in fillers:
            path.unlink()
        deadline = time.monotonic() + 10
        while (again := broker.ssh("tech+dev", "echo after")).code:
            assert time.monotonic() < deadline, again.err
            time.sleep(0.5)
        assert again.out == "after\n"
        verify_all_within(broker, 10)
        assert "Traceback" not in broker.serve_log()
    finally:
        if master is not None:
            master.kill()
        broker.stop()


def test_out_of_inodes_a_new_forward_on_a_live_connection_is_refused_and_cuts(
        tmp_path: Path, disk: Path, sshd_device: SshdDevice) -> None:
    mount_tmpfs(disk, "size=64m,nr_inodes=400")
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_RECORDING_DIR"] = str(disk / "recordings")
    (broker.root / "policies" / "forward.yaml").write_text(
        f"policies:\n  - name: forward\n    forward_ports: [{sshd_device.port}]\n")
    broker.one_grant(sshd_device)
    broker.serve()
    local = free_port()
    ssh, *rest = broker.ssh_args("tech+dev", "tech")
    live = subprocess.Popen([ssh, "-o", "LogLevel=INFO",  # ssh tells a refused open at INFO
                             "-L", f"{local}:localhost:{sshd_device.port}", *rest,
                             "sleep 120"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_live_sessions(broker, 1)
        wait_for_port(local, live)
        fillers = use_up_inodes(disk)
        with (socket.create_connection(("127.0.0.1", local), timeout=10) as conn,
              contextlib.suppress(ConnectionResetError)):
            assert conn.recv(100) == b"", "a forward that cannot be recorded carries nothing"
        err = live.communicate(timeout=10)[1]
        assert f"open failed: administratively prohibited: {NO_RECORDING}" in err, err
        assert broker_lines(err) == [
            "broker: this session's recording cannot be written (No space left on device),"
            " and no session goes on unrecorded; the session is closed."], err
        (refused,) = audited(broker, "channel.refused")
        assert refused["data"]["channel"] == "forward"
        assert refused["data"]["reason"] == NO_RECORDING.removeprefix("broker: ")
        assert audited(broker, "recording.failed")[0]["data"]["session_cut"] is True
        for path in fillers:
            path.unlink()
        verify_all_within(broker, 10)
        assert "Traceback" not in broker.serve_log()
    finally:
        live.kill()
        broker.stop()


def test_a_read_only_recordings_file_system_refuses_until_it_takes_writes(
        tmp_path: Path, disk: Path, sshd_device: SshdDevice) -> None:
    mount_tmpfs(disk, "size=8m")
    (disk / "recordings").mkdir()
    remount(disk, "ro")
    broker = broker_on(tmp_path, disk / "recordings", sshd_device)
    try:
        status, body = readyz(broker)
        assert status == 503 and body["problems"] == [
            "recordings: the directory does not take writes (Read-only file system)"]
        assert_new_sessions_refused(broker, "Read-only file system")
        assert [e["data"]["reason"] for e in audited(broker, "session.refused")] == [
            "recording-unavailable"]

        remount(disk, "rw")
        again = broker.ssh("tech+dev", "echo after")
        assert again.code == 0 and again.out == "after\n", again.err
        assert readyz(broker)[0] == 200
        verify_all_within(broker, 5)
        assert "Traceback" not in broker.serve_log()
    finally:
        broker.stop()
