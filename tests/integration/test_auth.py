"""Technician authentication with the stock client: broker-issued certificates (valid only
for the grant's window and principal, useless once revoked) and TOTP when a policy asks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyotp
import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, cert_ssh, keygen
from tests.integration.harness import issue_cert as issue


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    (proc.root / "policies" / "auth.yaml").write_text(
        "policies:\n"
        "  - name: totp-devices\n    devices: {tags: [totp]}\n    require_totp: true\n"
        "  - name: others\n    max_duration: 8h\n")
    proc.add_approver()
    for tech in ("alice", "bob", "carol"):
        proc.add_tech(tech)
    proc.add_sshd_device("dev", sshd_device)
    proc.add_sshd_device("secure-dev", sshd_device, "--tag", "totp")
    proc.serve()
    yield proc
    proc.stop()


def test_certificate_login_for_the_grant(broker, tmp_path):
    grant = broker.grant("alice", "dev")
    key = keygen(tmp_path / "laptop_key")  # not alice's registered key: only the cert works
    run = cert_ssh(broker, "alice+dev", key, issue(broker, grant, key), "echo via-cert")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "via-cert\n"
    bare = subprocess.run([*broker.ssh_args("alice+dev", "alice")[:1], "-p", str(broker.port),
                           "-i", str(key), "-o", "IdentitiesOnly=yes", "-o",
                           "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           "-o", "BatchMode=yes", "-l", "alice+dev", "127.0.0.1", "true"],
                          capture_output=True, text=True, timeout=30)
    assert bare.returncode == 255 and "Permission denied" in bare.stderr


def test_certificate_for_another_principal_is_refused(broker, tmp_path):
    grant = broker.grant("bob", "dev")
    key = keygen(tmp_path / "bob_laptop")
    cert = issue(broker, grant, key)
    run = cert_ssh(broker, "alice+dev", key, cert, "true")  # bob's cert, alice's name
    assert run.returncode == 255 and "Permission denied" in run.stderr


def test_certificate_after_revoke_is_refused(broker, tmp_path):
    grant = broker.grant("carol", "dev")
    key = keygen(tmp_path / "carol_laptop")
    cert = issue(broker, grant, key)
    assert cert_ssh(broker, "carol+dev", key, cert, "true").returncode == 0
    broker.cli("grant", "revoke", str(grant))
    run = cert_ssh(broker, "carol+dev", key, cert, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr  # refused at login
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    assert any(e["kind"] == "login.failed" and "revoked" in e["data"]["reason"] for e in tail)


def test_expired_certificate_is_refused(broker, tmp_path):
    grant = broker.grant("bob", "dev", "10s")  # room for a slow CLI under load
    key = keygen(tmp_path / "bob_short")
    cert = issue(broker, grant, key)
    shown = broker.cli_json("grant", "show", str(grant))
    assert isinstance(shown, dict)
    time.sleep(max(0.0, datetime.fromisoformat(shown["end"]).timestamp() - time.time()) + 0.5)
    run = cert_ssh(broker, "bob+dev", key, cert, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr


def askpass(tmp_path: Path, code_source: str) -> Path:
    script = tmp_path / f"askpass-{len(list(tmp_path.iterdir()))}.py"
    script.write_text(f"#!{sys.executable}\n{code_source}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def totp_ssh(broker: BrokerProcess, user: str, tech: str, script: Path, *command: str
             ) -> subprocess.CompletedProcess[str]:
    args = ["BatchMode=no" if a == "BatchMode=yes" else a for a in broker.ssh_args(user, tech)]
    return subprocess.run([*args, *command], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, "SSH_ASKPASS": str(script),
                               "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"})


def enroll(broker: BrokerProcess, tech: str) -> str:
    data = broker.cli_json("tech", "totp", "enroll", tech)
    assert isinstance(data, dict)
    return str(data["secret"])


def test_totp_required_by_policy(broker, tmp_path):
    secret = enroll(broker, "alice")
    broker.grant("alice", "secure-dev")
    good = askpass(tmp_path, f"import pyotp; print(pyotp.TOTP({secret!r}).now())")
    run = totp_ssh(broker, "alice+secure-dev", "alice", good, "echo with-totp")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "with-totp\n"
    tail = json.loads(broker.cli("audit", "tail", "-n", "15", "--json").out)
    assert any(e["kind"] == "login.succeeded" and e["data"]["method"] == "publickey+totp"
               for e in tail)


def test_wrong_or_replayed_totp_is_refused(broker, tmp_path):
    secret = enroll(broker, "bob")
    broker.grant("bob", "secure-dev")
    wrong = askpass(tmp_path, "print('000000')")
    run = totp_ssh(broker, "bob+secure-dev", "bob", wrong, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr
    code = pyotp.TOTP(secret).now()
    fixed = askpass(tmp_path, f"print({code!r})")
    first = totp_ssh(broker, "bob+secure-dev", "bob", fixed, "true")
    second = totp_ssh(broker, "bob+secure-dev", "bob", fixed, "true")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 255, "a TOTP code must work only once"


def test_key_alone_is_not_enough_when_totp_is_required(broker):
    broker.grant("carol", "secure-dev")
    run = broker.ssh("carol+secure-dev", "true")  # BatchMode: no keyboard-interactive
    assert run.code == 255 and "Permission denied" in run.err


def test_too_many_authentication_failures_disconnect(broker, tmp_path):
    keys = [keygen(tmp_path / f"stranger{i}") for i in range(8)]
    args = ["ssh", "-p", str(broker.port), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=INFO"]
    for key in keys:
        args += ["-i", str(key)]
    run = subprocess.run([*args, "-l", "alice+dev", "127.0.0.1", "true"], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 255
    assert "too many authentication failures" in run.stderr
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    assert any(e["kind"] == "login.throttled" for e in tail)


def test_unauthenticated_connection_flood_from_one_source_is_cut(broker):
    import socket

    idle = []
    try:
        for _ in range(10):  # the limit: ten connections may sit unauthenticated
            sock = socket.create_connection(("127.0.0.1", broker.port))
            sock.sendall(b"SSH-2.0-idle\r\n")
            idle.append(sock)
        time.sleep(0.5)
        run = broker.ssh("alice+dev", "true")
        assert run.code == 255
        assert "closed by remote host" in run.err or "reset" in run.err
        tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
        assert any(e["kind"] == "login.throttled" and e["data"].get("pending") == 11
                   for e in tail)
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.5)
    assert broker.ssh("alice+dev", "true").code in (0, 1)  # served again once they left
