"""Issue #16: a certificate issued for grant 1 opened another device. A certificate is bound
to its grant (principal ``grant-<id>``, key id naming grant and technician, serial issued for
that grant and key): it opens that grant's device only, never after the grant ended or was
revoked, and every refusal is audited. Real `ssh` with `CertificateFile`, real broker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import asyncssh
import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, cert_ssh, keygen
from tests.integration.harness import issue_cert as issue
from tests.security.ssh_world import UNLIMITED, wait_for_row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.env.update(UNLIMITED)
    proc.add_approver()
    for tech in ("alice", "bob"):
        proc.add_tech(tech)
    for name in ("dev-a", "dev-b"):
        proc.add_sshd_device(name, device)
    proc.serve()
    yield proc
    proc.stop()


def refused_row(broker: BrokerProcess, user: str, words: str) -> dict:
    return wait_for_row(broker, lambda r: r["kind"] == "login.failed"
                        and r["subject"] == user and words in r["data"]["reason"])


def test_certificate_for_grant_a_does_not_open_device_b(broker, tmp_path):
    grant_a = broker.grant("alice", "dev-a")
    broker.grant("alice", "dev-b")  # alice may reach dev-b too, but not with grant A's cert
    key = keygen(tmp_path / "laptop")
    cert = issue(broker, grant_a, key)
    ok = cert_ssh(broker, "alice+dev-a", key, cert, "echo in-a")
    assert ok.returncode == 0 and ok.stdout == "in-a\n", ok.stderr
    run = cert_ssh(broker, "alice+dev-b", key, cert, "echo in-b")
    assert run.returncode == 255 and "Permission denied" in run.stderr
    assert "in-b" not in run.stdout
    refused_row(broker, "alice+dev-b", f"grant {grant_a} opens dev-a, not dev-b")


def test_certificate_does_not_open_the_menu(broker, tmp_path):
    grant = broker.grant("alice", "dev-a")
    key = keygen(tmp_path / "laptop")
    run = cert_ssh(broker, "alice", key, issue(broker, grant, key))
    assert run.returncode == 255 and "Permission denied" in run.stderr
    refused_row(broker, "alice", "opens only TECH+DEVICE")


def test_certificate_for_another_technician_is_refused(broker, tmp_path):
    grant = broker.grant("bob", "dev-a")
    broker.grant("alice", "dev-a")
    key = keygen(tmp_path / "bobs")
    run = cert_ssh(broker, "alice+dev-a", key, issue(broker, grant, key), "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr
    refused_row(broker, "alice+dev-a", "is not grant")


def test_certificate_after_revoke_is_refused(broker, tmp_path):
    grant = broker.grant("bob", "dev-b")
    key = keygen(tmp_path / "laptop")
    cert = issue(broker, grant, key)
    assert cert_ssh(broker, "bob+dev-b", key, cert, "true").returncode == 0
    broker.cli("grant", "revoke", str(grant), "--reason", "test")
    run = cert_ssh(broker, "bob+dev-b", key, cert, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr
    refused_row(broker, "bob+dev-b", "revoked")


def test_certificate_after_the_grant_ended_is_refused_and_never_outlived_it(broker, tmp_path):
    grant = broker.grant("bob", "dev-a", "20s")  # room for slow CLI calls under load
    key = keygen(tmp_path / "laptop")
    cert = issue(broker, grant, key)
    shown = broker.cli_json("grant", "show", str(grant))
    assert isinstance(shown, dict)
    parsed = asyncssh.import_certificate(cert.read_text())
    valid_before = parsed._valid_before  # type: ignore[attr-defined]
    assert valid_before <= datetime.fromisoformat(shown["end"]).timestamp()
    assert cert_ssh(broker, "bob+dev-a", key, cert, "true").returncode == 0
    time.sleep(max(0.0, datetime.fromisoformat(shown["end"]).timestamp() - time.time()) + 0.5)
    run = cert_ssh(broker, "bob+dev-a", key, cert, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr
    refused_row(broker, "bob+dev-a", "expired")


def test_certificate_from_another_ca_is_refused(broker, tmp_path):
    grant = broker.grant("alice", "dev-a")
    key = keygen(tmp_path / "laptop")
    real = issue(broker, grant, key)
    serial = asyncssh.import_certificate(real.read_text())._serial  # type: ignore[attr-defined]
    rogue_ca = keygen(tmp_path / "rogue_ca")
    subprocess.run(["ssh-keygen", "-q", "-s", str(rogue_ca), "-I", f"broker-grant-{grant}-alice",
                    "-n", f"grant-{grant}", "-z", str(serial), "-V", "-1m:+1h", f"{key}.pub"],
                   check=True, capture_output=True)
    forged = key.with_name(f"{key.name}-cert.pub")
    run = cert_ssh(broker, "alice+dev-a", key, forged, "true")
    assert run.returncode == 255 and "Permission denied" in run.stderr


def test_registered_key_still_works(broker):
    broker.grant("alice", "dev-a")
    run = broker.ssh("alice+dev-a", "echo plain-key")
    assert run.code == 0 and run.out == "plain-key\n", run.err
