"""Issue #16: SSH refusals that left no audit row, and refusal messages that showed the
technician the device's internal address. Every refusal is audited through the broker's one
RefusalLog (rate-limited per source: a flood gives a bounded number of rows and a
`refusal.suppressed` count); a technician sees the device by its broker name only."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, free_port, keygen
from tests.security.ssh_world import UNLIMITED, audit_rows, wait_for_row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def down_port() -> Iterator[int]:
    """A loopback port where nothing listens (a device that is down): bound, never listening,
    so that no other test process takes it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, device: SshdDevice, down_port: int
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.env.update(UNLIMITED)
    (proc.root / "policies" / "test.yaml").write_text(
        "policies:\n  - name: all\n    max_duration: 8h\n    forward_ports: [22, 8080]\n")
    proc.add_approver()
    proc.add_tech("tech")
    proc.add_sshd_device("dev", device)
    proc.cli("device", "add", "down-dev", "--host", "127.0.0.1", "--port", str(down_port),
             "--user", device.user, "--key", str(device.login_key))
    proc.add_sshd_device("fake-dev", device)
    for name in ("dev", "down-dev", "fake-dev"):
        proc.grant("tech", name, "2h")
    proc.serve()
    yield proc
    proc.stop()


def ssh(broker: BrokerProcess, user: str, *options: str, command: str = "true",
        env: dict[str, str] | None = None, tty: bool = False
        ) -> subprocess.CompletedProcess[str]:
    ssh_, *rest = broker.ssh_args(user, "tech", tty=tty)
    return subprocess.run([ssh_, *options, *rest, command], capture_output=True, text=True,
                          timeout=30, env=env, errors="replace")


def user_config(tmp_path: Path, user: str) -> Path:
    """An ssh_config naming ``user``: OpenSSH >= 9.6 refuses shell characters in a user name
    given on the command line, not in a configuration file (and an attacker writes their own)."""
    config = tmp_path / f"ssh_config-{len(list(tmp_path.glob('ssh_config-*')))}"
    config.write_text(f'Host target\n  HostName 127.0.0.1\n  User "{user}"\n')
    return config


def ssh_as(broker: BrokerProcess, tmp_path: Path, user: str, *options: str
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(user_config(tmp_path, user)), "-p", str(broker.port),
         "-i", str(broker.tech_keys.get("tech") or keygen(tmp_path / "k")),
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", *options,
         "target", "true"], capture_output=True, text=True, timeout=60, errors="replace")


# -- agent and X11 forwarding -------------------------------------------------------------

def test_agent_forwarding_is_refused_and_audited(broker, tmp_path):
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(os.environ)
    for part in agent.stdout.split(";"):
        if "=" in part and not part.strip().startswith("export"):
            key, value = part.strip().split("=", 1)
            env[key] = value
    try:
        run = ssh(broker, "tech+dev", "-A", command="echo agent=${SSH_AUTH_SOCK:-none}",
                  env=env)
    finally:
        subprocess.run(["ssh-agent", "-k"], env=env, capture_output=True)
    assert run.returncode == 0 and "agent=none" in run.stdout, run.stderr
    row = wait_for_row(broker, lambda r: r["kind"] == "channel.refused"
                       and r["data"].get("channel") == "agent")
    assert row["actor"] == "technician:tech" and row["data"]["source"] == "127.0.0.1"


def test_x11_forwarding_is_refused_and_audited(broker):
    run = ssh(broker, "tech+dev", "-X", command="echo display=${DISPLAY:-none}",
              env={**os.environ, "DISPLAY": ":0"})
    assert run.returncode == 0 and "display=none" in run.stdout, run.stderr
    wait_for_row(broker, lambda r: r["kind"] == "channel.refused"
                 and r["data"].get("channel") == "x11")


# -- pre-login refusals -------------------------------------------------------------------

@pytest.mark.parametrize("user,shown", [
    ("bad;name", "bad;name"),
    ("tech+dev;id", "tech+dev;id"),
    ("x" * 300, "x" * 40),
    ("tech+dev+dev", "more than one"),
    ("$(id)", "$(id)"),
    ("tech\u00e9+dev", "\\xe9"),
    ("te\x01ch+dev", "Prohibited character"),  # asyncssh disconnects before begin_auth
    ("tech\u202e+dev", "Prohibited character"),
])
def test_illegal_user_name_is_refused_and_audited(broker, tmp_path, user, shown):
    run = ssh_as(broker, tmp_path, user)
    assert run.returncode == 255
    assert "Permission denied" in run.stderr or "Prohibited character" in run.stderr

    def match(row: dict) -> bool:
        data = row["data"]
        return row["kind"] == "login.failed" and (
            ("bad user name" in data["reason"] and shown in data["reason"] + str(row["subject"]))
            or shown in data.get("error", ""))

    row = wait_for_row(broker, match)
    assert row["data"]["source"] == "127.0.0.1"
    assert all(ch.isprintable() for ch in row["data"]["reason"] + str(row["subject"])
               + row["data"].get("error", ""))


def test_wrong_key_and_unknown_technician_are_audited(broker, tmp_path):
    stranger = keygen(tmp_path / "stranger")
    for user in ("tech+dev", "nobody+dev"):
        run = subprocess.run(["ssh", "-p", str(broker.port), "-i", str(stranger),
                              "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                              "-l", user, "127.0.0.1", "true"],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 255 and "Permission denied" in run.stderr
        wait_for_row(broker, lambda r, u=user: r["kind"] == "login.failed"
                     and r["subject"] == u)


def test_disconnect_before_naming_a_user_is_audited(broker):
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.recv(100)
        sock.sendall(b"SSH-2.0-probe\r\n")
    wait_for_row(broker, lambda r: r["kind"] == "login.failed"
                 and r["data"]["reason"] == "disconnected before naming a user")


# -- device addresses ---------------------------------------------------------------------

def test_down_device_is_named_by_its_broker_name_only(broker, down_port):
    run = ssh(broker, "tech+down-dev", command="true")
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == ["broker: cannot reach device down-dev"], run.stderr
    assert str(down_port) not in run.stderr and "127.0.0.1" not in run.stderr
    row = wait_for_row(broker, lambda r: r["kind"] == "session.refused"
                       and r["subject"] == "down-dev")
    assert f"127.0.0.1:{down_port}" in row["data"]["internal"]


def test_down_device_shell_and_sftp_show_no_address(broker, down_port):
    shell = ssh(broker, "tech+down-dev", command="", tty=True)
    assert str(down_port) not in shell.stdout + shell.stderr
    sftp = subprocess.run(["sftp", "-P", str(broker.port), "-i", str(broker.tech_keys["tech"]),
                           "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                           "tech+down-dev@127.0.0.1"], input="ls\n", capture_output=True,
                          text=True, timeout=30)
    assert sftp.returncode != 0
    assert str(down_port) not in sftp.stdout + sftp.stderr


def test_forward_to_a_down_device_shows_no_address(broker, down_port):
    local = free_port()
    proc = subprocess.Popen([*broker.ssh_args("tech+down-dev", "tech")[:1], "-o",
                             "LogLevel=INFO", "-N", "-L",
                             f"{local}:localhost:8080",
                             *broker.ssh_args("tech+down-dev", "tech")[1:]],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=2)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with conn, contextlib.suppress(ConnectionResetError):
            assert conn.recv(10) == b""
        row = wait_for_row(broker, lambda r: r["kind"] == "channel.refused"
                           and r["subject"] == "down-dev")
        assert f"127.0.0.1:{down_port}" in row["data"]["internal"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
    assert "cannot reach device down-dev" in err
    assert str(down_port) not in err


def test_host_key_mismatch_names_the_device_only(broker, device, tmp_path):
    # pin fake-dev's key (first use), then make the pinned key another one: an impersonator
    assert ssh(broker, "tech+fake-dev", command="true").returncode == 0
    other = keygen(tmp_path / "other_host")
    with sqlite3.connect(broker.root / "data" / "broker.db") as db:
        db.execute("UPDATE device SET host_key = ? WHERE name = 'fake-dev'",
                   (Path(f"{other}.pub").read_text().strip(),))
    run = ssh(broker, "tech+fake-dev", command="true")
    assert run.returncode == 1
    assert "fake-dev presented a host key that does not match" in run.stderr
    assert str(device.port) not in run.stderr and "127.0.0.1" not in run.stderr
    row = wait_for_row(broker, lambda r: r["kind"] == "session.refused"
                       and r["subject"] == "fake-dev")
    assert f"127.0.0.1:{device.port}" in row["data"]["internal"]


# -- a flood ------------------------------------------------------------------------------

@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker with the default refusal limit (5 rows per source and kind per minute)."""
    (tmp_path / "b").mkdir()
    proc = BrokerProcess(tmp_path / "b").init()
    proc.env.pop("BROKER_SSH_REFUSAL_BURST", None)
    proc.serve()
    yield proc
    proc.stop()


def test_flood_of_bad_user_names_gives_bounded_rows_and_a_count(limited_broker, tmp_path):
    broker = limited_broker
    before = len(audit_rows(broker, 100000))

    config = user_config(tmp_path, "bad;user")

    def attempt(_: int) -> int:
        return subprocess.run(
            ["ssh", "-F", str(config), "-p", str(broker.port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
             "-o", "LogLevel=QUIET", "-o", "PubkeyAuthentication=no", "target", "true"],
            capture_output=True, timeout=60).returncode

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(attempt, range(200)))
    assert set(codes) == {255}
    time.sleep(0.5)
    broker.stop()  # the summary of the refusals still uncounted is written at shutdown
    rows = audit_rows(broker, 100000)[before:]
    refusals = [r for r in rows if r["kind"] in ("login.failed", "login.throttled")]
    summaries = [r for r in rows if r["kind"] == "refusal.suppressed"]
    assert 1 <= len(refusals) <= 10, [r["kind"] for r in rows]
    assert summaries and all(s["data"]["source"] == "127.0.0.1" for s in summaries)
    assert len(refusals) + sum(s["data"]["count"] for s in summaries) == 200


# -- other technician text that would reach the device ------------------------------------

@pytest.mark.parametrize("term", ["../../../tmp/evil", "xterm;id", "x" * 100, "xterm\x1b[2J"])
def test_odd_terminal_type_is_refused(broker, term):
    run = ssh(broker, "tech+dev", command="echo ran", env={**os.environ, "TERM": term},
              tty=True)
    assert run.returncode == 1 and "ran" not in run.stdout
    assert "is not accepted" in run.stderr
    wait_for_row(broker, lambda r: r["kind"] == "session.refused"
                 and r["data"]["reason"] == "terminal")
