"""Every channel type end to end with the stock OpenSSH client, and the escape attempts the
broker must refuse: forwards elsewhere, remote forwards, agent and X11 forwarding, -W."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, free_port

BIG = 100 * 1024 * 1024


class EchoServer:
    """A TCP service 'on the device' (loopback) for port-forward tests."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.sock.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice,
           echo: EchoServer) -> Iterator[BrokerProcess]:
    """A broker whose policy allows forwarding to the echo port only."""
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    (proc.root / "policies" / "test.yaml").write_text(
        "policies:\n  - name: test-all\n    max_duration: 8h\n"
        f"    forward_ports: [{echo.port}]\n    breakglass_max: 1h\n")
    proc.one_grant(sshd_device)
    proc.serve()
    yield proc
    proc.stop()


def ssh_with(broker: BrokerProcess, *options: str) -> list[str]:
    """``ssh`` to tech+dev through the broker, with extra client options."""
    ssh, *rest = broker.ssh_args("tech+dev", "tech")
    return [ssh, *options, *rest]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def client_opts(broker: BrokerProcess) -> list[str]:
    return ["-P", str(broker.port), "-i", str(broker.tech_keys["tech"]),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


def newest_session(broker: BrokerProcess, before: set[Path]) -> Path:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [p for p in broker.recordings() if p not in before]
        if new and json.loads((new[0] / "session.json").read_text()).get("ended_at"):
            return new[0]
        time.sleep(0.05)
    raise TimeoutError("no sealed session recording")


def oplog(session: Path, prefix: str) -> list[dict]:
    lines = []
    for path in sorted(session.glob(f"{prefix}-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


@pytest.mark.parametrize("legacy", [False, True], ids=["scp-sftp", "scp-legacy"])
def test_scp_100mib_both_ways(broker, tmp_path, legacy):
    source = tmp_path / "upload.bin"
    with source.open("wb") as handle:
        for _ in range(BIG // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    remote = f"/tmp/broker-scp-{uuid.uuid4().hex}.bin"
    flags = ["-O"] if legacy else []
    before = set(broker.recordings())
    up = subprocess.run(["scp", *flags, *client_opts(broker), str(source),
                         f"tech+dev@127.0.0.1:{remote}"], capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "download.bin"
    down = subprocess.run(["scp", *flags, *client_opts(broker),
                           f"tech+dev@127.0.0.1:{remote}", str(back)], capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    os.unlink(remote)
    digest = sha256(source)
    assert sha256(back) == digest
    sessions = [p for p in broker.recordings() if p not in before]
    ops = [op for s in sessions for op in oplog(s, "scp" if legacy else "sftp")]
    uploads = [op for op in ops if op.get("op") == "upload"]
    downloads = [op for op in ops if op.get("op") == "download"]
    assert uploads and uploads[0].get("sha256", uploads[0].get("sha256_written")) == digest
    assert downloads and downloads[0].get("sha256", downloads[0].get("sha256_read")) == digest


def test_sftp_put_get_ls_rename_rm(broker, tmp_path):
    local = tmp_path / "report.txt"
    local.write_text("calibration ok\n" * 100)
    remote_dir = f"/tmp/broker-sftp-{uuid.uuid4().hex}"
    os.mkdir(remote_dir)
    batch = tmp_path / "batch"
    batch.write_text(f"cd {remote_dir}\nput {local} report.txt\nls -l\n"
                     "rename report.txt renamed.txt\nget renamed.txt "
                     f"{tmp_path / 'back.txt'}\nrm renamed.txt\nls\n")
    before = set(broker.recordings())
    run = subprocess.run(["sftp", *client_opts(broker), "-b", str(batch), "tech+dev@127.0.0.1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "report.txt" in run.stdout
    assert (tmp_path / "back.txt").read_text() == local.read_text()
    assert os.listdir(remote_dir) == []
    os.rmdir(remote_dir)
    ops = oplog(newest_session(broker, before), "sftp")
    kinds = [op["op"] for op in ops]
    for expected in ("upload", "download", "remove"):
        assert expected in kinds, kinds
    assert any(op["op"] in ("rename", "posix-rename@openssh.com") for op in ops), kinds
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert any(digest in json.dumps(op) for op in ops if op["op"] == "upload")


def test_sftp_paths_with_dotdot_are_the_devices_business(broker, tmp_path):
    """The broker relays paths unchanged: `..` resolves on the device exactly as with a
    direct login, so the broker never widens access (it has no file view of its own)."""
    batch = tmp_path / "batch"
    batch.write_text("ls /tmp/../etc/hostname\n")
    run = subprocess.run(["sftp", *client_opts(broker), "-b", str(batch), "tech+dev@127.0.0.1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "/etc/hostname" in run.stdout


def test_local_forward_to_allowed_device_port(broker, echo):
    local = free_port()
    proc = subprocess.Popen(ssh_with(broker, "-N", "-L", f"{local}:localhost:{echo.port}"),
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=2) as conn:
                    conn.sendall(b"ping through the broker")
                    assert conn.recv(100) == b"ping through the broker"
                    break
            except (ConnectionRefusedError, ConnectionResetError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.parametrize("spec", ["{port}:localhost:{other}", "{port}:example.org:{echo}",
                                  "{port}:other-device.invalid:22"])
def test_local_forward_elsewhere_is_refused_and_audited(broker, echo, spec):
    local = free_port()
    forward = spec.format(port=local, other=free_port(), echo=echo.port)
    proc = subprocess.Popen(ssh_with(broker, "-N", "-L", forward), stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=2)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            try:
                conn.sendall(b"x")
                assert conn.recv(10) == b"", "a refused forward must carry no data"
            except ConnectionResetError:
                pass
    finally:
        proc.kill()
        proc.wait(5)
    target = forward.split(":", 1)[1]
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    assert any(e["kind"] == "channel.refused" and e["data"]["channel"] == "forward"
               and e["data"]["destination"] == target for e in tail)


def test_stdio_forward_is_refused(broker):
    run = subprocess.run(ssh_with(broker, "-W", "localhost:22"),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert "stdio forwarding failed" in run.stderr
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    assert any(e["kind"] == "channel.refused" and e["data"]["destination"] == "localhost:22"
               for e in tail)


def test_remote_forward_is_refused(broker):
    run = subprocess.run([*ssh_with(broker, "-o", "ExitOnForwardFailure=yes", "-R",
                                    f"{free_port()}:localhost:22"), "true"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 255
    assert "remote port forwarding failed" in run.stderr.lower()
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    assert any(e["kind"] == "channel.refused" and e["data"]["channel"] == "remote-forward"
               for e in tail)


def test_agent_and_x11_forwarding_never_reach_the_device(broker, tmp_path):
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    env = dict(os.environ)
    for line in agent.stdout.split(";"):
        if "=" in line and not line.strip().startswith("export"):
            key, value = line.strip().split("=", 1)
            env[key] = value
    try:
        run = subprocess.run([*ssh_with(broker, "-A", "-X"),
                              "echo agent=${SSH_AUTH_SOCK:-none} display=${DISPLAY:-none}"],
                             capture_output=True, text=True, timeout=30,
                             env={**env, "DISPLAY": ":0"})
    finally:
        subprocess.run(["ssh-agent", "-k"], env=env, capture_output=True)
    assert run.returncode == 0, run.stderr
    assert "agent=none display=none" in run.stdout


def test_other_device_in_user_name_is_refused(broker, sshd_device):
    broker.add_sshd_device("other-dev", sshd_device)
    run = broker.ssh("tech+other-dev", "true")
    assert run.code == 1 and "refused (no grant)" in run.err
