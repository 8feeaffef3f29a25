"""Short-lived OpenSSH user certificates: ``broker cert issue`` (the real console script, and
real ``ssh-keygen -L`` reading what it wrote) and the service on a fake clock (validity never
beyond the grant, refusals, forwarding, serials), the authorized-keys line the SSH server uses,
and migration 0002 on a database at 0001."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel, select

from broker.domain.protocols import Protocol
from broker.errors import NotFound, Refused, UsageError
from broker.services.certs import Certificates, user_ca_authorized_keys_line
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.grants import Grants
from broker.services.requests import Requests
from broker.services.setup import initialise, migrate_database
from broker.store.engine import Store, alembic_config
from broker.store.models import AuditEvent, Device, IssuedCertificate
from broker.testing import FakeClock

if TYPE_CHECKING:
    from conftest import Cli, CliResult

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CertFields:
    """What a certificate says (asyncssh keeps key id, serial and validity private)."""

    principals: list[str]
    key_id: str
    serial: int
    valid_after: datetime
    valid_before: datetime
    options: dict[str, Any]
    signing_key: bytes
    key: bytes


def fields_of(text: str) -> CertFields:
    # import_certificate verifies the CA's signature, so this also proves the cert is signed
    cert = asyncssh.import_certificate(text)
    return CertFields(
        principals=list(cert.principals), key_id=cert._key_id,  # type: ignore[attr-defined]
        serial=cert._serial,  # type: ignore[attr-defined]
        valid_after=datetime.fromtimestamp(cert._valid_after, UTC),  # type: ignore[attr-defined]
        valid_before=datetime.fromtimestamp(cert._valid_before, UTC),  # type: ignore[attr-defined]
        options=dict(cert.options),  # type: ignore[attr-defined]
        signing_key=cert.signing_key.public_data,  # type: ignore[attr-defined]
        key=cert.key.public_data)


def one_line_error(result: CliResult, code: int, *fragments: str) -> str:
    assert result.code == code, result
    assert "Traceback" not in result.err and result.out == ""
    assert len(result.err_lines) == 1, result.err
    line: str = result.err_lines[0]
    assert line.startswith("broker: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def ok_json(result: CliResult) -> Any:
    assert result.code == 0, result.err
    assert result.err == ""
    return json.loads(result.out)


def certificate_rows(directory: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "data" / "broker.db") as db:
        return db.execute("SELECT serial, grant_id, key_id, valid_after, valid_before "
                          "FROM issued_certificate ORDER BY id").fetchall()


def ca_public(directory: Path) -> bytes:
    return asyncssh.read_private_key(str(directory / "data" / "user_ca")).public_data


# --- the console script -----------------------------------------------------------------------

@dataclass(frozen=True)
class Granted:
    dir: Path
    ssh_only: dict[str, Any]  # grant JSON: alice on pump1, ssh only
    forward: dict[str, Any]  # alice on pump1, ssh + forward
    revoked: dict[str, Any]


@pytest.fixture(scope="module")
def granted(_broker_template: Path, ssh_keypair: tuple[Path, Path],
            tmp_path_factory: pytest.TempPathFactory, cli_for: Callable[[Path], Cli]
            ) -> Granted:
    directory = Path(shutil.copytree(_broker_template, tmp_path_factory.mktemp("cert") / "b"))
    cli = cli_for(directory)
    setup = cli.many([
        ("tech", "add", "alice", "--vendor", "BD", "--key", ssh_keypair[1]),
        ("approver", "add", "bob", "--email", "bob@hospital.example"),
        ("device", "add", "pump1", "--host", "10.0.0.5", "--user", "svc", "--password-env",
         "PW"),
    ], env={"PW": "pump-password"})
    assert all(r.code == 0 for r in setup), setup
    grants = []
    for protocols in ("ssh", "ssh,forward", "ssh"):
        request = ok_json(cli("request", "create", "--tech", "alice", "--device", "pump1",
                              "--for", "1h", "--reason", "pump service", "--protocols",
                              protocols, "--json"))
        decided = ok_json(cli("request", "approve", str(request["id"]), "--as", "bob",
                              "--json"))
        grants.append(decided["grant"])
    assert cli("grant", "revoke", str(grants[2]), "--reason", "done").code == 0
    shown = [ok_json(r) for r in cli.many([("grant", "show", str(g), "--json")
                                           for g in grants])]
    return Granted(directory, *shown)


@pytest.fixture
def gcli(granted: Granted, tmp_path: Path, cli_for: Callable[[Path], Cli]) -> Cli:
    """The CLI on this test's own copy of the granted broker."""
    return cli_for(Path(shutil.copytree(granted.dir, tmp_path / "broker")))


def test_issue_prints_a_certificate_for_the_technician_until_the_grant_ends(
        granted: Granted, gcli: Cli, ssh_pubkey: Path) -> None:
    before = datetime.now(UTC)
    result = gcli("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key", ssh_pubkey)
    after = datetime.now(UTC)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssh-ed25519-cert-v01@openssh.com ")
    cert = fields_of(lines[0])
    grant_id, end = granted.ssh_only["id"], datetime.fromisoformat(granted.ssh_only["end"])
    assert cert.principals == [f"grant-{grant_id}"]
    assert cert.key_id == f"broker-grant-{grant_id}-alice"
    assert cert.signing_key == ca_public(gcli.dir)
    assert cert.key == asyncssh.read_public_key(str(ssh_pubkey)).public_data
    assert cert.valid_before == end.replace(microsecond=0) and cert.valid_before <= end
    # valid from now minus the one-minute clock-skew allowance
    skew = timedelta(seconds=60)
    assert (before - skew).replace(microsecond=0) <= cert.valid_after <= after - skew
    # a pty, nothing else: no port, agent or X11 forwarding for an ssh-only grant
    assert cert.options == {"permit-pty": True}
    assert 0 < cert.serial < 2**63
    # the summary: one line on stderr with the validity
    assert len(result.err_lines) == 1, result.err
    summary = result.err_lines[0]
    assert "alice" in summary and f"grant {grant_id}" in summary and str(cert.serial) in summary
    assert f"{cert.valid_before:%Y-%m-%d %H:%M:%S}" in summary
    # recorded and audited
    rows = certificate_rows(gcli.dir)
    assert [(r[0], r[1], r[2]) for r in rows] == [(cert.serial, grant_id, cert.key_id)]
    with sqlite3.connect(gcli.dir / "data" / "broker.db") as db:
        events = db.execute("SELECT subject, data FROM audit_event "
                            "WHERE kind = 'certificate.issued'").fetchall()
    assert len(events) == 1 and events[0][0] == f"grant:{grant_id}"
    assert json.loads(events[0][1])["serial"] == cert.serial
    verified = gcli("audit", "verify")
    assert verified.code == 0, verified.err


def test_out_file_is_what_openssh_reads(granted: Granted, gcli: Cli, ssh_pubkey: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    out = gcli.dir / "id_ed25519-cert.pub"
    grant_id = granted.forward["id"]
    written, as_json = gcli.many([
        ("cert", "issue", "--grant", str(grant_id), "--key", ssh_pubkey, "--out", out),
        ("cert", "issue", "--grant", str(grant_id), "--key", ssh_pubkey, "--json"),
    ])
    assert written.code == 0, written.err
    assert written.out == "" and len(written.err_lines) == 1 and str(out) in written.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    text = out.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1
    cert = fields_of(text)
    assert cert.options == {"permit-port-forwarding": True, "permit-pty": True}

    listed = subprocess.run(["ssh-keygen", "-L", "-f", str(out)], capture_output=True,
                            text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    assert "user certificate" in listed
    assert f'Key ID: "broker-grant-{grant_id}-alice"' in listed
    assert f"Serial: {cert.serial}" in listed
    principals = listed.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == [f"grant-{grant_id}"]
    end = datetime.fromisoformat(granted.forward["end"])
    assert (f"Valid: from {cert.valid_after:%Y-%m-%dT%H:%M:%S} "
            f"to {end:%Y-%m-%dT%H:%M:%S}") in listed
    extensions = listed.split("Extensions:")[1].split()
    assert sorted(extensions) == ["permit-port-forwarding", "permit-pty"]

    data = ok_json(as_json)
    assert data["grant"] == grant_id and data["technician"] == "alice"
    assert data["file"] is None and isinstance(data["id"], int)
    json_cert = fields_of(data["certificate"])
    assert json_cert.serial == data["serial"] != cert.serial
    assert datetime.fromisoformat(data["valid_before"]) == json_cert.valid_before
    assert sorted(r[0] for r in certificate_rows(gcli.dir)) == sorted(
        [cert.serial, json_cert.serial])


def test_refusals_and_bad_keys_are_one_line(granted: Granted, gcli: Cli, ssh_keypair:
                                            tuple[Path, Path]) -> None:
    private, public = ssh_keypair
    garbage = gcli.dir / "garbage.pub"
    garbage.write_text("ssh-ed25519 not-base64!!\n")
    two = gcli.dir / "two.pub"
    two.write_text(public.read_text() * 2)
    revoked, unknown, bad, missing, secret, doubled, bad_out = gcli.many([
        ("cert", "issue", "--grant", str(granted.revoked["id"]), "--key", public),
        ("cert", "issue", "--grant", "999", "--key", public),
        ("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key", garbage),
        ("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key",
         gcli.dir / "nope.pub"),
        ("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key", private),
        ("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key", two),
        ("cert", "issue", "--grant", str(granted.ssh_only["id"]), "--key", public,
         "--out", gcli.dir / "no-such-dir" / "cert.pub"),
    ])
    one_line_error(revoked, 1, f"grant {granted.revoked['id']} is revoked")
    one_line_error(unknown, 1, "no grant with id 999")
    one_line_error(bad, 2, str(garbage), "not an OpenSSH public key")
    one_line_error(missing, 2, "nope.pub", "cannot read")
    one_line_error(secret, 2, str(private), "private key")
    one_line_error(doubled, 2, str(two), "2 public keys")
    one_line_error(bad_out, 2, "no-such-dir", "does not exist")
    assert certificate_rows(gcli.dir) == []


# --- the service, on a fake clock -------------------------------------------------------------

async def make_context(tmp_path: Path, clock: FakeClock) -> Context:
    config = initialise(tmp_path)
    await migrate_database(config.database_url)
    ctx = Context.open(config, clock=clock)
    directory = Directory(ctx, "test")
    await directory.add_technician("alice", "B. Braun",
                                   [asyncssh.generate_private_key("ssh-ed25519")])
    await directory.add_approver("dana", "dana@hospital.example", ["biomed"])
    await directory.add_device(Device(name="pump-7", host="127.0.0.1", port=22,
                                      login_user="service"), "password", b"secret")
    return ctx


async def grant_for(ctx: Context, minutes: int, start: datetime | None = None,
                    protocols: frozenset[Protocol] | None = None) -> int:
    request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=minutes),
                                                 "battery check", start=start,
                                                 protocols=protocols)
    decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
    assert decision.grant is not None and decision.grant.id is not None
    return decision.grant.id


def user_key_text() -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key, key.export_public_key().decode()


async def test_validity_is_inside_the_grant_at_every_moment(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        later = START + timedelta(hours=3, microseconds=700_000)  # an end with a fraction
        scheduled = await grant_for(ctx, 30, start=later)
        _, pub = user_key_text()
        certs = Certificates(ctx, "test")
        # before the window: from its start (minus the skew allowance) to its end
        row, text = await certs.issue(scheduled, pub)
        cert = fields_of(text)
        end = later + timedelta(minutes=30)
        assert cert.valid_after == row.valid_after == (later - timedelta(seconds=60)).replace(
            microsecond=0)
        assert cert.valid_before == row.valid_before == end.replace(microsecond=0)
        assert cert.valid_before <= end
        # inside the window, at several moments: from now (minus skew), never past the end
        for offset in (timedelta(0), timedelta(minutes=10, seconds=1.5),
                       timedelta(minutes=29, seconds=59)):
            now = clock.set(later + offset)
            row, text = await certs.issue(scheduled, pub)
            cert = fields_of(text)
            assert cert.valid_after == (now - timedelta(seconds=60)).replace(microsecond=0)
            assert cert.valid_before == end.replace(microsecond=0) <= end
            assert row.valid_before == cert.valid_before
        # at the end and after it: refused, nothing more recorded
        for moment in (end, end + timedelta(days=1)):
            clock.set(moment)
            with pytest.raises(Refused, match=f"grant {scheduled} is expired"):
                await certs.issue(scheduled, pub)
        async with ctx.store.session() as db:
            rows = (await db.exec(select(IssuedCertificate))).all()
            issued = (await db.exec(select(AuditEvent).where(
                AuditEvent.kind == "certificate.issued"))).all()
        assert len(rows) == 4 and len({r.serial for r in rows}) == 4
        assert all(r.valid_before <= end and r.grant_id == scheduled for r in rows)
        assert len(issued) == 4
        assert {json.loads(e.data)["serial"] for e in issued} == {r.serial for r in rows}
    finally:
        await ctx.close()


async def test_refused_for_revoked_unknown_and_disabled(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        grant = await grant_for(ctx, 60)
        _, pub = user_key_text()
        certs = Certificates(ctx, "test")
        await certs.issue(grant, pub)
        await Grants(ctx, "test").revoke(grant, "incident")
        with pytest.raises(Refused, match=f"grant {grant} is revoked"):
            await certs.issue(grant, pub)
        with pytest.raises(NotFound, match="no grant with id 4711"):
            await certs.issue(4711, pub)
        other = await grant_for(ctx, 60)
        await Directory(ctx, "test").disable_technician("alice")
        with pytest.raises(Refused, match="disabled"):
            await certs.issue(other, pub)
        with pytest.raises(UsageError, match=r"^alice\.pub:1: not an OpenSSH public key"):
            await certs.issue(other, "ssh-rsa AAAA-garbage", source="alice.pub")
        async with ctx.store.session() as db:
            assert len((await db.exec(select(IssuedCertificate))).all()) == 1
    finally:
        await ctx.close()


async def test_port_forwarding_only_when_the_grant_allows_forward(tmp_path: Path) -> None:
    ctx = await make_context(tmp_path, FakeClock(START))
    try:
        plain = await grant_for(ctx, 60, protocols=frozenset({Protocol.SSH, Protocol.SFTP}))
        forward = await grant_for(ctx, 60, protocols=frozenset({Protocol.SSH,
                                                                Protocol.FORWARD}))
        key, pub = user_key_text()
        certs = Certificates(ctx, "test")
        no_fwd = fields_of((await certs.issue(plain, pub))[1])
        fwd = fields_of((await certs.issue(forward, pub))[1])
        assert no_fwd.options == {"permit-pty": True}
        assert fwd.options == {"permit-port-forwarding": True, "permit-pty": True}
        assert fwd.key == no_fwd.key == key.public_data
        assert fwd.key_id == f"broker-grant-{forward}-alice" != no_fwd.key_id
    finally:
        await ctx.close()


async def test_serials_are_random_63_bit_and_unique(tmp_path: Path) -> None:
    ctx = await make_context(tmp_path, FakeClock(START))
    try:
        grant = await grant_for(ctx, 60)
        _, pub = user_key_text()
        certs = Certificates(ctx, "test")
        serials = [fields_of((await certs.issue(grant, pub))[1]).serial for _ in range(12)]
        assert len(set(serials)) == 12
        assert all(0 < s < 2**63 for s in serials)
        assert max(serials) > 2**40  # random, not a counter
    finally:
        await ctx.close()


# --- accepting certificates: the authorized-keys line ---------------------------------------

def test_authorized_keys_line_accepts_the_ca_for_those_principals_only() -> None:
    ca_pub = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    ca = asyncssh.import_public_key(ca_pub)
    other_ca = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    line = user_ca_authorized_keys_line(ca_pub, "alice")
    assert line.startswith('cert-authority,principals="alice" ssh-ed25519 ')
    two = asyncssh.import_authorized_keys(user_ca_authorized_keys_line(ca_pub, "grant-1",
                                                                       "grant-7"))
    assert two.validate(ca, "h", "127.0.0.1", cert_principals=["grant-7"], ca=True) is not None
    assert two.validate(ca, "h", "127.0.0.1", cert_principals=["grant-2"], ca=True) is None
    keys = asyncssh.import_authorized_keys(line)
    assert keys.validate(ca, "h", "127.0.0.1", cert_principals=["alice"], ca=True) is not None
    assert keys.validate(ca, "h", "127.0.0.1", cert_principals=["bob"], ca=True) is None
    assert keys.validate(other_ca, "h", "127.0.0.1", cert_principals=["alice"],
                         ca=True) is None
    assert keys.validate(ca, "h", "127.0.0.1", ca=False) is None  # not a plain user key
    for bad in ("a,b", 'a"', "a b", ""):
        with pytest.raises(ValueError, match="principal"):
            user_ca_authorized_keys_line(ca_pub, bad)
    with pytest.raises(ValueError, match="exactly one"):
        user_ca_authorized_keys_line(ca_pub + ca_pub, "alice")


# --- migration 0002 ---------------------------------------------------------------------------

async def query(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in (await conn.exec_driver_sql(sql)).all()]


async def test_migration_0002_upgrades_a_0001_database_and_matches_the_models(
        tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}")
    config = alembic_config()

    def to(revision: str, down: bool = False) -> Callable[[Any], None]:
        def go(connection: Any) -> None:
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
        return go

    def diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))

    try:
        async with store.engine.connect() as conn:
            await conn.run_sync(to("0001"))
            await conn.exec_driver_sql(
                "INSERT INTO technician (name, vendor, disabled, created_at) "
                "VALUES ('alice', 'BD', 0, '2026-01-01 00:00:00')")
            await conn.commit()
            await conn.run_sync(to("head"))
            await conn.commit()
        head = ScriptDirectory.from_config(config).get_current_head()
        assert await store.current_revision() == head
        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            rows = await query(conn, "SELECT name, totp_last_step FROM technician")
            assert rows == [("alice", None)]
            columns = {r[1]: r for r in await query(conn, "PRAGMA table_info(issued_certificate)")}
            assert columns["serial"][2] == "BIGINT"
            await conn.run_sync(to("0001", down=True))
            await conn.commit()
            tables = {r[0] for r in await query(
                conn, "SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "issued_certificate" not in tables
            assert "totp_last_step" not in [
                r[1] for r in await query(conn, "PRAGMA table_info(technician)")]
    finally:
        await store.close()



class PerTechnician(asyncssh.SSHServer):
    """Like the broker's SSH server: the CA line for the grants of the technician and device
    named in the user name (``TECH+DEVICE``) is set per connection."""

    def __init__(self, ca_pub: str, grants: dict[str, str]) -> None:
        self.ca_pub, self.grants = ca_pub, grants
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        line = user_ca_authorized_keys_line(self.ca_pub, self.grants.get(username, "none"))
        self.conn.set_authorized_keys(asyncssh.import_authorized_keys(line))
        return True


async def test_issued_certificate_logs_in_through_the_authorized_keys_line(
        tmp_path: Path) -> None:
    """An asyncssh server given only the CA line accepts the certificate for its technician:
    the pieces the SSH server combines fit together (signature, principal, validity)."""
    ctx = await make_context(tmp_path, FakeClock(datetime.now(UTC)))
    try:
        await Directory(ctx, "test").add_technician(
            "bob", "B. Braun", [asyncssh.generate_private_key("ssh-ed25519")])
        grant = await grant_for(ctx, 60)
        key, pub = user_key_text()
        _, text = await Certificates(ctx, "test").issue(grant, pub)
        ca_pub = (tmp_path / "data" / "user_ca.pub").read_text()
        server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            server_factory=lambda: PerTechnician(ca_pub, {"alice+pump-7": f"grant-{grant}",
                                                          "bob+pump-7": "grant-999"}))
        port = server.sockets[0].getsockname()[1]
        cert = asyncssh.import_certificate(text)

        async def login(username: str, keys: list[Any]) -> None:
            async with asyncssh.connect("127.0.0.1", port, username=username,
                                        known_hosts=None, client_keys=keys) as conn:
                assert conn.get_extra_info("username") == username

        try:
            await login("alice+pump-7", [(key, cert)])
            with pytest.raises(asyncssh.PermissionDenied):  # alice's certificate is not bob's
                await login("bob+pump-7", [(key, cert)])
            with pytest.raises(asyncssh.PermissionDenied):  # the bare key is not enough
                await login("alice+pump-7", [key])
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await ctx.close()
