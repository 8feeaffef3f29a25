"""Device credential rotation against the simulated device (a real SSH server in-process),
on a fake clock: on demand, after a grant ends, retries with back-off after a failure,
recovery of an interrupted rotation, leases between nodes, retirement, the vault key, and
the CLI's good and bad paths. The real-sshd cases are in tests/integration/test_rotation.py."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest
from sqlmodel import select

from broker.aio import within
from broker.config import load_config
from broker.credentials.rotation import _rotate, retire_device, rotate_due, rotate_on_demand
from broker.demo.device import SimulatedDevice, start_simulated_device
from broker.domain import rotation as domain
from broker.domain.protocols import Protocol
from broker.domain.rotation import Prompt, RotationError, RotationMethod
from broker.errors import Conflict, Refused
from broker.revocation.registry import LiveSessions
from broker.revocation.rotator import Rotator
from broker.revocation.scheduler import Scheduler
from broker.services import rotations
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.grants import Grants, check_access
from broker.services.requests import Requests
from broker.services.sessions import device_login
from broker.services.setup import initialise, migrate_database
from broker.store.models import AuditEvent, Device, DeviceCredential, Session, Technician
from broker.testing import FakeClock
from tests.conftest import Cli

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
OLD = "old-Secret-7"


# -- the pure part ---------------------------------------------------------------------------
def test_retry_delay_doubles_from_one_minute_to_an_hour() -> None:
    minutes = [domain.retry_delay(n) / timedelta(minutes=1) for n in range(1, 10)]
    assert minutes == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert domain.retry_delay(10_000) == timedelta(hours=1)
    with pytest.raises(ValueError, match="starts at 1"):
        domain.retry_delay(0)


def test_due_after_grant_end_waits_for_sessions_to_be_cut_but_keeps_an_earlier_due() -> None:
    assert domain.due_after_grant_end(START, None) == START + domain.SETTLE
    assert domain.due_after_grant_end(START, START - timedelta(hours=1)) == START - timedelta(
        hours=1)
    assert domain.due_after_grant_end(START, START + timedelta(hours=1)) == START + domain.SETTLE


def test_claimable_only_when_due_and_no_live_lease() -> None:
    assert not domain.is_claimable(None, None, START)
    assert not domain.is_claimable(START + timedelta(seconds=1), None, START)
    assert domain.is_claimable(START, None, START)
    assert not domain.is_claimable(START, START + timedelta(seconds=1), START)
    assert domain.is_claimable(START, START, START)


def test_method_defaults_by_kind_and_must_fit_the_credential() -> None:
    assert domain.method_for("password", None) is RotationMethod.CHPASSWD
    assert domain.method_for("key", None) is RotationMethod.AUTHORIZED_KEY
    assert domain.method_for("password", "passwd") is RotationMethod.PASSWD
    with pytest.raises(RotationError, match="does not fit a password credential"):
        domain.method_for("password", "authorized_key")
    with pytest.raises(RotationError, match="does not fit a key credential"):
        domain.method_for("key", "chpasswd")
    with pytest.raises(RotationError, match="'sudo' is not a rotation method"):
        domain.method_for("password", "sudo")


@pytest.mark.parametrize(("output", "expected"), [
    ("Changing password for svc.\nCurrent password: ", Prompt.CURRENT),
    ("(current) UNIX password: ", Prompt.CURRENT),
    ("Password: ", Prompt.CURRENT),
    ("New password: ", Prompt.NEW),
    ("Enter new UNIX password: ", Prompt.NEW),
    ("Retype new password: ", Prompt.RETYPE),
    ("Re-enter new password: ", Prompt.RETYPE),
    ("BAD PASSWORD: it is too short\nNew password: ", Prompt.NEW),
    ("passwd: password updated successfully\n", None),
    ("Changing password for svc.\n", None),
])
def test_passwd_prompts_are_recognised(output: str, expected: Prompt | None) -> None:
    assert domain.classify_prompt(output) is expected


def test_authorized_keys_editing_keeps_other_lines() -> None:
    old = "ssh-ed25519 AAAAC3NzaOLD broker"
    other = 'from="10.0.0.1" ssh-ed25519 AAAAC3NzaOTHER admin@site'
    text = f"# managed\n{other}\n{old}"
    added = domain.with_key_added(text, "ssh-ed25519 AAAAC3NzaNEW broker-new")
    assert added == f"# managed\n{other}\n{old}\nssh-ed25519 AAAAC3NzaNEW broker-new\n"
    assert domain.with_key_added(added, "ssh-ed25519 AAAAC3NzaNEW again") == added
    assert domain.without_keys(added, ["AAAAC3NzaOLD"]) == (
        f"# managed\n{other}\nssh-ed25519 AAAAC3NzaNEW broker-new\n")
    assert domain.key_blob(other) == "AAAAC3NzaOTHER"
    assert domain.key_blob("# comment") is None


# -- the service, against the simulated device -------------------------------------------------
@pytest.fixture
async def pump(tmp_path: Path) -> AsyncIterator[SimulatedDevice]:
    device = await start_simulated_device(tmp_path / "pump", password=OLD,
                                          host_key_path=tmp_path / "pump_host_key")
    yield device
    await device.close()


async def make_context(tmp_path: Path, clock: FakeClock, pump: SimulatedDevice,
                       rotate: bool = True, method: str | None = None) -> Context:
    config = initialise(tmp_path / "broker")
    await migrate_database(config.database_url)
    ctx = Context.open(config, clock=clock)
    directory = Directory(ctx, "test")
    await directory.add_technician("alice", "B. Braun",
                                   [asyncssh.generate_private_key("ssh-ed25519")])
    await directory.add_approver("dana", "dana@hospital.example", ["biomed"])
    await directory.add_device(Device(name="pump-7", host=pump.host, port=pump.port,
                                      login_user=pump.username, rotate=rotate,
                                      rotate_method=method), "password", OLD.encode())
    return ctx


async def device_row(ctx: Context) -> Device:
    async with ctx.store.session() as db:
        row = (await db.exec(select(Device).where(Device.name == "pump-7"))).one()
    return row


async def credentials(ctx: Context) -> list[DeviceCredential]:
    async with ctx.store.session() as db:
        return list((await db.exec(select(DeviceCredential))).all())


async def audit(ctx: Context, kind: str) -> list[dict[str, object]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == kind))).all()
    return [json.loads(r.data) for r in rows]


async def audit_text(ctx: Context) -> str:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent))).all()
    return "\n".join(f"{r.kind} {r.subject} {r.data}" for r in rows)


async def vaulted_password(ctx: Context) -> str:
    login = await device_login(ctx, (await device_row(ctx)).id or 0)
    return login.secret.decode()


@pytest.mark.parametrize("method", ["chpasswd", "passwd"])
async def test_on_demand_rotation_changes_the_device_then_the_vault(
        tmp_path: Path, pump: SimulatedDevice, method: str) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump, method=method)
    try:
        outcome = await rotate_on_demand(ctx, "pump-7", "cli:test")
        assert outcome.ok, outcome.detail
        assert outcome.detail == f"device pump-7: credential rotated ({method})"
        new = pump.password
        assert new is not None and new != OLD and len(new) >= 24
        assert await vaulted_password(ctx) == new
        rows = await credentials(ctx)
        assert len(rows) == 1 and rows[0].current
        assert (await device_row(ctx)).rotated_at == START
        assert await audit(ctx, "device.rotated") == [{"method": method, "reason": None}]
        text = await audit_text(ctx)
        assert new not in text and OLD not in text
    finally:
        await ctx.close()


async def test_grant_end_triggers_a_rotation_after_its_sessions_are_cut(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock, pump)
    request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=10),
                                                 "battery check")
    decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
    assert decision.grant is not None
    scheduler, rotator = Scheduler(ctx, LiveSessions()), Rotator(ctx)
    task = asyncio.create_task(rotator.run())
    try:
        async with asyncio.timeout(10):
            await clock.wait_for_sleepers(1)
        assert clock.next_deadline == START + timedelta(minutes=10)  # nothing due: long sleep
        clock.set(START + timedelta(minutes=10))
        await scheduler.tick()  # the grant expires
        assert (await device_row(ctx)).rotation_due_at == clock.now() + domain.SETTLE
        assert (await device_row(ctx)).rotation_reason == f"grant {decision.grant.id} expired"
        rotator.replan()  # what the change feed does on grant.expired
        await settle(clock, deadline=clock.now() + domain.SETTLE)
        assert pump.password == OLD  # not before the sessions had their seconds to go
        clock.advance(domain.SETTLE)
        await settle(clock, until=lambda: pump.password != OLD)
        assert await vaulted_password(ctx) == pump.password
        row = await device_row(ctx)
        assert row.rotation_due_at is None and row.rotation_attempts == 0
        assert [e["reason"] for e in await audit(ctx, "device.rotated")] == [
            f"grant {decision.grant.id} expired"]
    finally:
        task.cancel()
        await ctx.close()


async def settle(clock: FakeClock, deadline: datetime | None = None,
                 until: object = None) -> None:
    """Let the rotator finish its round (real SSH I/O) and go back to sleep."""
    async with asyncio.timeout(30):
        while True:
            await asyncio.sleep(0.02)
            if clock.sleepers and (deadline is None or clock.next_deadline == deadline) and (
                    until is None or until()):  # type: ignore[operator]
                return


async def test_failed_rotation_keeps_the_old_secret_alerts_and_retries_with_backoff(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock, pump)
    port = pump.port
    await pump.close()  # the device is down
    async with ctx.store.session() as db:
        row = (await db.exec(select(Device))).one()
        rotations.mark_due(row, START, "grant 1 revoked")
        db.add(row)
    rotator = Rotator(ctx)
    task = asyncio.create_task(rotator.run())
    try:
        await settle(clock, deadline=START + timedelta(minutes=1))
        failures = await audit(ctx, "device.rotation_failed")
        assert len(failures) == 1
        assert failures[0]["step"] == "login" and failures[0]["attempts"] == 1
        assert failures[0]["retry_at"] == (START + timedelta(minutes=1)).isoformat()
        assert "cannot reach device pump-7" in str(failures[0]["error"])
        assert await vaulted_password(ctx) == OLD
        assert [c.current for c in await credentials(ctx)] == [True]  # pending one dropped
        clock.set(START + timedelta(minutes=1))  # still down: the next wait doubles
        await settle(clock, deadline=START + timedelta(minutes=3))
        assert len(await audit(ctx, "device.rotation_failed")) == 2
        revived = await start_simulated_device(pump.root, port=port, password=OLD,
                                               host_key_path=tmp_path / "pump_host_key")
        try:
            clock.set(START + timedelta(minutes=3))
            await settle(clock, until=lambda: revived.password != OLD)
            assert await vaulted_password(ctx) == revived.password
            row = await device_row(ctx)
            assert row.rotation_due_at is None and row.rotation_attempts == 0
            assert row.rotation_claimed_by is None
        finally:
            await revived.close()
    finally:
        task.cancel()
        await ctx.close()


async def test_a_rotation_interrupted_after_the_device_took_the_new_secret_is_recovered(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump)
    try:
        device = await device_row(ctx)
        async with ctx.store.session() as db:  # the broker died between device and vault
            db.add(DeviceCredential(device_id=device.id or 0, kind="password",
                                    secret=ctx.vault.seal(b"taken-by-the-device"),
                                    created_at=START, current=False))
        pump.set_password("taken-by-the-device")
        outcome = await rotate_on_demand(ctx, "pump-7", "cli:test")
        assert outcome.ok
        assert await vaulted_password(ctx) == "taken-by-the-device"
        assert await audit(ctx, "device.rotated") == [
            {"method": "chpasswd", "reason": None, "recovered": True}]
        assert len(await credentials(ctx)) == 1
    finally:
        await ctx.close()


async def test_a_pending_secret_the_device_never_took_is_dropped(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump)
    try:
        device = await device_row(ctx)
        async with ctx.store.session() as db:
            db.add(DeviceCredential(device_id=device.id or 0, kind="password",
                                    secret=ctx.vault.seal(b"never-set"), created_at=START,
                                    current=False))
        assert (await rotate_on_demand(ctx, "pump-7", "cli:test")).ok
        assert pump.password not in (OLD, "never-set")
        assert [c.current for c in await credentials(ctx)] == [True]
        assert await vaulted_password(ctx) == pump.password
    finally:
        await ctx.close()


async def test_only_one_node_works_a_due_rotation(tmp_path: Path,
                                                 pump: SimulatedDevice) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock, pump)
    other = Context.open(ctx.config, clock=clock)
    other.node = ctx.node + "-2"
    try:
        device = await device_row(ctx)
        assert device.id is not None
        assert not await rotations.claim(ctx, device.id)  # not due
        async with ctx.store.session() as db:
            row = await db.get(Device, device.id)
            assert row is not None
            rotations.mark_due(row, START, "test")
            db.add(row)
        assert await rotations.claim(ctx, device.id)
        assert not await rotations.claim(other, device.id)
        assert await rotate_due(other, device.id) is None  # leased: node-2 leaves it
        assert pump.password == OLD
        with pytest.raises(Conflict, match=f"already under way on {ctx.node}; try again"):
            await rotate_on_demand(other, "pump-7", "cli:test")
        clock.advance(domain.LEASE)  # node-1 died holding it: the lease runs out
        outcome = await rotate_due(other, device.id)
        assert outcome is not None and outcome.ok and pump.password != OLD
    finally:
        await other.close()
        await ctx.close()


async def test_retire_rotates_then_deletes_the_secrets_and_refuses_access(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump, rotate=True)
    try:
        device, outcome = await retire_device(ctx, "pump-7", "cli:test")
        assert device.state == "retired"
        assert outcome is not None and outcome.ok and outcome.secrets_deleted
        assert pump.password not in (None, OLD)
        assert await credentials(ctx) == []
        assert len(await audit(ctx, "device.secrets_deleted")) == 1
        access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
        assert not access.allowed and "retired" in access.decision.detail
        with pytest.raises(Refused, match="'pump-7' is retired"):
            await rotate_on_demand(ctx, "pump-7", "cli:test")
    finally:
        await ctx.close()


async def test_retire_reports_the_final_rotation_another_node_ran(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    """`broker serve` may claim the final rotation before the CLI that retired the device:
    the CLI waits for it and reports how it went, not "under way" with nothing settled."""
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock, pump, rotate=True)
    other = Context.open(ctx.config, clock=clock)
    other.node = ctx.node + "-2"
    try:
        device_id = (await device_row(ctx)).id or 0
        assert await rotations.claim(other, device_id, on_demand=True)
        retiring = asyncio.ensure_future(retire_device(ctx, "pump-7", "cli:test"))
        while (await device_row(ctx)).state != "retired":
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert not retiring.done()  # it waits for the other node
        assert (await _rotate(other, device_id, "broker")).ok
        await rotations.release(other, device_id)
        _, outcome = await within(10, retiring)
        assert outcome is not None and outcome.ok and outcome.secrets_deleted
        assert "another node" in outcome.detail
        assert await credentials(ctx) == [] and pump.password not in (None, OLD)
    finally:
        await other.close()
        await ctx.close()


async def test_retiring_a_device_not_marked_rotate_deletes_its_secrets_untouched(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump, rotate=False)
    try:
        device, outcome = await retire_device(ctx, "pump-7", "cli:test")
        assert device.state == "retired" and outcome is None
        assert pump.password == OLD and pump.sessions_started == 0  # never logged in
        assert await credentials(ctx) == []
        assert [e["reason"] for e in await audit(ctx, "device.secrets_deleted")] == [
            "device retired (not marked rotate)"]
        assert (await device_row(ctx)).rotation_due_at is None
    finally:
        await ctx.close()


async def test_revoking_a_grant_on_a_rotate_device_makes_it_due(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    ctx = await make_context(tmp_path, FakeClock(START), pump)
    try:
        request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=10),
                                                     "battery check")
        decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
        assert decision.grant is not None and (await device_row(ctx)).rotation_due_at is None
        await Grants(ctx, "test").revoke(decision.grant.id or 0, "incident")
        row = await device_row(ctx)
        assert row.rotation_due_at == START + domain.SETTLE
        assert row.rotation_reason == f"grant {decision.grant.id} revoked"
    finally:
        await ctx.close()


async def test_vault_key_rotation_reencrypts_and_a_running_vault_follows(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    from broker.credentials.vault_keys import rotate_key

    ctx = await make_context(tmp_path, FakeClock(START), pump)
    try:
        assert await vaulted_password(ctx) == OLD  # loads the vault with the old key
        key_file = ctx.config.path(ctx.config.settings.vault.key_file)
        old_key = key_file.read_bytes().strip()
        assert await rotate_key(ctx, "cli:test") == 1
        new_keys = key_file.read_bytes().split()
        assert len(new_keys) == 1 and new_keys[0] != old_key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert await vaulted_password(ctx) == OLD  # the cached vault reloaded the file
        fresh = Context.open(ctx.config)
        try:
            assert await vaulted_password(fresh) == OLD
        finally:
            await fresh.close()
        assert await audit(ctx, "vault.key_rotated") == [{"secrets": 1}]
        assert not list(key_file.parent.glob(".*.new"))
    finally:
        await ctx.close()


async def test_no_rotation_under_a_session_of_the_grant_that_just_ended(
        tmp_path: Path, pump: SimulatedDevice) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock, pump)
    try:
        request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=10),
                                                     "battery check")
        decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
        assert decision.grant is not None
        device = await device_row(ctx)
        async with ctx.store.session() as db:
            db.add(Session(id="s1", grant_id=decision.grant.id or 0, technician_id=1,
                           device_id=device.id or 0, node=ctx.node, started_at=START))
        await Grants(ctx, "test").revoke(decision.grant.id or 0, "incident")
        clock.advance(domain.SETTLE)
        rotator = Rotator(ctx)
        assert await rotator.tick() == clock.now() + domain.SETTLE  # still being cut: later
        assert pump.password == OLD
        assert (await device_row(ctx)).rotation_due_at == clock.now() + domain.SETTLE
        async with ctx.store.session() as db:
            live = await db.get(Session, "s1")
            assert live is not None
            live.state = "closed"
            db.add(live)
        clock.advance(domain.SETTLE)
        await rotator.tick()
        assert pump.password != OLD and await vaulted_password(ctx) == pump.password
    finally:
        await ctx.close()


async def test_vault_key_rotation_interrupted_before_the_old_key_is_dropped(
        tmp_path: Path, pump: SimulatedDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.credentials import vault_keys

    ctx = await make_context(tmp_path, FakeClock(START), pump)
    try:
        async with ctx.store.session() as db:
            tech = (await db.exec(select(Technician))).one()
            tech.totp_secret = ctx.vault.seal(b"JBSWY3DPEHPK3PXP")
            db.add(tech)
        key_file = ctx.config.path(ctx.config.settings.vault.key_file)
        write = vault_keys.write_key_file
        calls: list[int] = []

        def crash_on_the_final_write(path: Path, keys: list[bytes]) -> None:
            calls.append(len(keys))
            if len(calls) == 2:
                raise KeyboardInterrupt("the broker died here")
            write(path, keys)

        monkeypatch.setattr(vault_keys, "write_key_file", crash_on_the_final_write)
        with pytest.raises(KeyboardInterrupt):
            await vault_keys.rotate_key(ctx, "cli:test")
        assert len(key_file.read_bytes().split()) == 2  # new and old: everything decrypts
        fresh = Context.open(ctx.config)
        try:
            assert await vaulted_password(fresh) == OLD
        finally:
            await fresh.close()
        monkeypatch.setattr(vault_keys, "write_key_file", write)
        assert await vault_keys.rotate_key(ctx, "cli:test") == 2  # run again: completes
        assert len(key_file.read_bytes().split()) == 1
        assert await vaulted_password(ctx) == OLD
        async with ctx.store.session() as db:
            tech = (await db.exec(select(Technician))).one()
        assert tech.totp_secret is not None
        assert ctx.vault.open(tech.totp_secret) == b"JBSWY3DPEHPK3PXP"
    finally:
        await ctx.close()


# -- the CLI ---------------------------------------------------------------------------------
async def acli(cli: Cli, *args: str, env: dict[str, str] | None = None
               ) -> tuple[int, str, str]:
    """The CLI as a subprocess, while this test's event loop keeps the device serving."""
    from tests.conftest import BROKER, clean_env

    proc = await asyncio.create_subprocess_exec(
        str(BROKER), "--config", str(cli.config), *args, env=clean_env(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await within(60, proc.communicate())
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_device_rotate_good_and_bad_paths(cli: Cli, pump: SimulatedDevice) -> None:
    env = {"PUMP_PW": OLD}
    code, _, err = await acli(cli, "device", "add", "pump-7", "--host", pump.host, "--port",
                              str(pump.port), "--user", pump.username, "--password-env",
                              "PUMP_PW", "--rotate", "--rotate-method", "passwd", env=env)
    assert code == 0, err
    code, out, err = await acli(cli, "device", "rotate", "pump-7")
    assert (code, err) == (0, "") and out == "device pump-7: credential rotated (passwd)\n"
    assert pump.password != OLD and pump.password not in out
    (code, out, err), missing = await asyncio.gather(
        acli(cli, "device", "show", "pump-7"), acli(cli, "device", "rotate", "nosuch"))
    fields = dict(re.findall(r"^([a-z ]+):\s+(.*)$", out, re.M))
    assert fields["rotate method"] == "passwd" and fields["last rotated"].startswith("2026-")
    assert missing == (1, "", "broker: no device named 'nosuch'\n")

    await pump.close()
    code, out, err = await acli(cli, "device", "rotate", "pump-7")
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("broker: device pump-7: rotation failed at login: cannot reach")
    assert "the old credential stays in use; retry at" in err

    db = sqlite3.connect(cli.dir / "data" / "broker.db")
    db.execute("DELETE FROM device_credential")
    db.commit()
    code, out, err = await acli(cli, "device", "rotate", "pump-7")
    assert (code, err) == (1, "broker: device 'pump-7' has no credential in the vault to"
                              " rotate\n")
    db.execute("UPDATE device SET state = 'retired'")
    db.commit()
    db.close()
    code, out, err = await acli(cli, "device", "rotate", "pump-7")
    assert (code, err) == (1, "broker: device 'pump-7' is retired: it has no credential left"
                              " to rotate\n")


def test_cli_device_add_rejects_a_rotate_method_that_does_not_fit(cli: Cli) -> None:
    bad = cli("device", "add", "pump-9", "--host", "127.0.0.1", "--user", "svc",
              "--password-env", "PW", "--rotate-method", "authorized_key", env={"PW": "x"})
    assert bad.code == 2 and bad.err_lines == [
        "broker: --rotate-method: rotation method authorized_key does not fit a password"
        " credential (use chpasswd or passwd)"]
    bad = cli("device", "add", "pump-9", "--host", "127.0.0.1", "--user", "svc",
              "--password-env", "PW", "--rotate-method", "sudo", env={"PW": "x"})
    assert bad.code == 2 and len(bad.err_lines) == 1 and "'sudo' is not a rotation method" in (
        bad.err)


def test_cli_vault_rotate_key(cli: Cli) -> None:
    assert cli("device", "add", "pump-9", "--host", "127.0.0.1", "--user", "svc",
               "--password-env", "PW", env={"PW": "s3cret"}).code == 0
    key_file = cli.dir / "data" / "vault.key"
    before = key_file.read_bytes()
    result = cli("vault", "rotate-key", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"secrets": 1}
    after = key_file.read_bytes()
    assert before.strip() not in after and len(after.split()) == 1
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    async def secret() -> bytes:
        ctx = Context.open(load_config(cli.config))
        try:
            return (await device_login(ctx, 1)).secret
        finally:
            await ctx.close()

    assert asyncio.run(secret()) == b"s3cret"
    assert cli("vault", "rotate-key").out == "vault key rotated; 1 secrets re-encrypted\n"
