"""Credential rotation against real OpenSSH devices: throwaway local accounts (useradd) served
by a real sshd, a real `broker serve`, the technician's stock `ssh` before and after. The
technician, the logs and the audit trail never show a device secret."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from broker.config import load_config
from broker.services.context import Context
from broker.services.sessions import device_login
from tests.integration.harness import BrokerProcess, Result, SshdDevice, keygen

pytestmark = pytest.mark.integration

if os.geteuid() != 0 or shutil.which("useradd") is None:
    pytest.skip("rotation tests create throwaway local accounts: they need root and useradd",
                allow_module_level=True)


@dataclass
class Account:
    name: str
    home: Path
    password: str


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    """A local account `vabrot<random>` with a password, its home outside pytest's 0700
    temp dirs (sshd reads ~/.ssh as the account), deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vabrot-"))
    base.chmod(0o755)
    name, password = f"vabrot{secrets.token_hex(4)}", f"Init-{secrets.token_urlsafe(12)}"
    home = base / name
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/sh", name], check=True,
                   capture_output=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True,
                       capture_output=True)
        yield Account(name, home, password)
    finally:
        subprocess.run(["userdel", "-f", "-r", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory, account: Account) -> Iterator[SshdDevice]:
    sshd = SshdDevice(tmp_path_factory.mktemp("sshd"), user=account.name, password_auth=True,
                      authorized_keys_file=".ssh/authorized_keys").start()
    yield sshd
    sshd.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.add_approver()
    proc.add_tech("tech")
    proc.serve()
    yield proc
    proc.stop()


def add_password_device(broker: BrokerProcess, name: str, device: SshdDevice,
                        account: Account, method: str) -> None:
    broker.cli("device", "add", name, "--host", "127.0.0.1", "--port", str(device.port),
               "--user", account.name, "--password-env", "DEVICE_PW", "--rotate",
               "--rotate-method", method, env={"DEVICE_PW": account.password})


def vaulted(broker: BrokerProcess, device_name: str) -> bytes:
    async def read() -> bytes:
        ctx = Context.open(load_config(broker.config))
        try:
            db = sqlite3.connect(broker.root / "data" / "broker.db")
            (device_id,) = db.execute("SELECT id FROM device WHERE name = ?",
                                      (device_name,)).fetchone()
            db.close()
            return (await device_login(ctx, device_id)).secret
        finally:
            await ctx.close()

    return asyncio.run(read())


def can_log_in(device: SshdDevice, user: str, *, password: str | None = None,
               key: bytes | None = None) -> bool:
    """A direct login to the device (not through the broker) with exactly this secret."""
    async def attempt() -> bool:
        try:
            conn = await asyncssh.connect(
                "127.0.0.1", device.port, username=user, known_hosts=None, agent_path=None,
                config=None, password=password,
                client_keys=[asyncssh.import_private_key(key)] if key else None,
                preferred_auth=["password"] if password else ["publickey"])
        except asyncssh.PermissionDenied:
            return False
        conn.close()
        return True

    return asyncio.run(attempt())


def audit_rows(broker: BrokerProcess, kind: str) -> list[dict[str, object]]:
    db = sqlite3.connect(broker.root / "data" / "broker.db")
    rows = db.execute("SELECT data FROM audit_event WHERE kind = ? ORDER BY seq",
                      (kind,)).fetchall()
    db.close()
    return [json.loads(data) for (data,) in rows]


def everything_written(broker: BrokerProcess, *outputs: Result) -> str:
    """What the technician saw, the broker's logs, and the whole audit trail."""
    db = sqlite3.connect(broker.root / "data" / "broker.db")
    audit = "\n".join(f"{k} {d}" for k, d in db.execute("SELECT kind, data FROM audit_event"))
    db.close()
    logs = [broker.serve_log(), load_config(broker.config).log_file.read_text()]
    return "\n".join([*(o.out + o.err for o in outputs), *logs, audit])


def wait_for(condition: object, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)


def test_failed_rotation_keeps_access_and_is_reported(broker: BrokerProcess,
                                                      device: SshdDevice,
                                                      account: Account) -> None:
    # an unprivileged account may not run chpasswd: the device refuses the change
    add_password_device(broker, "dev-bad", device, account, "chpasswd")
    broker.grant("tech", "dev-bad", "30m")
    run = broker.cli("device", "rotate", "dev-bad", check=False)
    assert run.code == 1 and run.out == "" and len(run.err.splitlines()) == 1, run
    assert run.err.startswith("broker: device dev-bad: rotation failed at change: chpasswd"
                              " exited with status 1")
    assert "the old credential stays in use; retry at" in run.err
    assert vaulted(broker, "dev-bad") == account.password.encode()
    assert can_log_in(device, account.name, password=account.password)
    session = broker.ssh("tech+dev-bad", "id -un")
    assert session.code == 0 and session.out.strip() == account.name, session
    (failure,) = audit_rows(broker, "device.rotation_failed")
    assert failure["step"] == "change" and failure["attempts"] == 1
    show = broker.cli("device", "show", "dev-bad").out
    assert "(after 1 failed attempts)" in show
    assert account.password not in everything_written(broker, run, session)


def test_password_rotation_with_passwd_on_a_real_sshd(broker: BrokerProcess,
                                                     device: SshdDevice,
                                                     account: Account) -> None:
    add_password_device(broker, "dev", device, account, "passwd")
    grant = broker.grant("tech", "dev", "30m")
    before = broker.ssh("tech+dev", "id -un")
    assert before.code == 0 and before.out.strip() == account.name, before

    rotated = broker.cli("device", "rotate", "dev")
    assert rotated.out == "device dev: credential rotated (passwd)\n"
    new = vaulted(broker, "dev").decode()
    assert new != account.password
    assert not can_log_in(device, account.name, password=account.password)
    assert can_log_in(device, account.name, password=new)
    after = broker.ssh("tech+dev", "id -un")
    assert after.code == 0 and after.out.strip() == account.name, after

    # the grant ends (revoked): `broker serve` rotates again on its own, a few seconds later
    broker.cli("grant", "revoke", str(grant), "--reason", "done")
    wait_for(lambda: len(audit_rows(broker, "device.rotated")) == 2)
    newer = vaulted(broker, "dev").decode()
    assert newer not in (new, account.password)
    assert not can_log_in(device, account.name, password=new)
    assert can_log_in(device, account.name, password=newer)
    assert audit_rows(broker, "device.rotated")[-1] == {
        "method": "passwd", "reason": f"grant {grant} revoked"}

    written = everything_written(broker, before, rotated, after)
    for secret in (account.password, new, newer):
        assert secret not in written
    account.password = newer


def test_key_rotation_replaces_the_authorized_key(broker: BrokerProcess, device: SshdDevice,
                                                  account: Account,
                                                  tmp_path: Path) -> None:
    login_key = keygen(tmp_path / "device_login", "broker-login")
    other = keygen(tmp_path / "other_admin", "other-admin")
    ssh_dir = account.home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys_file = ssh_dir / "authorized_keys"
    other_line = Path(f"{other}.pub").read_text().strip()
    keys_file.write_text(f"{other_line}\n{Path(f'{login_key}.pub').read_text()}")
    shutil.chown(ssh_dir, account.name, account.name)
    shutil.chown(keys_file, account.name, account.name)
    keys_file.chmod(0o600)
    broker.cli("device", "add", "dev-key", "--host", "127.0.0.1", "--port", str(device.port),
               "--user", account.name, "--key", str(login_key), "--rotate")
    broker.grant("tech", "dev-key", "30m")
    before = broker.ssh("tech+dev-key", "id -un")
    assert before.code == 0 and before.out.strip() == account.name, before

    rotated = broker.cli("device", "rotate", "dev-key", "--json")
    outcome = json.loads(rotated.out)
    assert outcome["ok"] and outcome["method"] == "authorized_key"
    assert outcome["fingerprint"].startswith("SHA256:")
    new_key = vaulted(broker, "dev-key")
    assert b"OPENSSH PRIVATE KEY" in new_key
    assert not can_log_in(device, account.name, key=login_key.read_bytes())
    assert can_log_in(device, account.name, key=new_key)
    lines = keys_file.read_text().splitlines()
    assert lines[0] == other_line and len(lines) == 2  # the other admin's key is untouched
    assert asyncssh.import_public_key(lines[1]).get_fingerprint() == outcome["fingerprint"]
    assert keys_file.stat().st_mode & 0o777 == 0o600
    assert audit_rows(broker, "device.rotated")[-1] == {
        "method": "authorized_key", "reason": None, "fingerprint": outcome["fingerprint"]}
    after = broker.ssh("tech+dev-key", "id -un")
    assert after.code == 0 and after.out.strip() == account.name, after
    assert new_key.decode().split("\n")[1] not in everything_written(broker, before, after)


def test_retire_rotates_a_last_time_then_deletes_the_secrets(broker: BrokerProcess,
                                                             device: SshdDevice,
                                                             account: Account) -> None:
    last = vaulted(broker, "dev").decode()
    assert can_log_in(device, account.name, password=last)
    retired = broker.cli("device", "retire", "dev")
    assert retired.out == ("device dev retired; its grants are revoked; final credential"
                           " rotation done; its secrets are deleted from the vault\n")
    assert not can_log_in(device, account.name, password=last)
    db = sqlite3.connect(broker.root / "data" / "broker.db")
    left = db.execute("SELECT count(*) FROM device_credential JOIN device"
                      " ON device.id = device_credential.device_id WHERE device.name = 'dev'"
                      ).fetchone()
    db.close()
    assert left == (0,)
    refused = broker.ssh("tech+dev", "id -un")
    assert refused.code != 0 and "retired" in refused.err
    assert broker.cli("device", "rotate", "dev", check=False).code == 1
