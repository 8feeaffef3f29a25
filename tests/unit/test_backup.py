"""``broker backup`` / ``broker restore`` through the real console script: a consistent
SQLite snapshot (WAL content included), keys and policies with a SHA-256 manifest, restore
only into an empty place, tampering refused before anything is written, and the audit chain
checked on the restored copy. PostgreSQL goes through pg_dump / pg_restore."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest

if TYPE_CHECKING:
    from tests.conftest import Cli, CliResult

POLICY = """policies:
  - name: pumps
    devices: {names: [pump-7]}
    breakglass_max: 30m
"""


def populate(cli: Cli) -> None:
    key = cli.dir / "alice.pub"
    key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    (cli.dir / "policies" / "pumps.yaml").write_text(POLICY)
    for args, env in (
            (("tech", "add", "alice", "--vendor", "BD", "--key", str(key)), None),
            (("approver", "add", "dana", "--email", "dana@hospital.example"), None),
            (("device", "add", "pump-7", "--host", "127.0.0.1", "--user", "svc",
              "--password-env", "PW"), {"PW": "device-secret"}),
            (("breakglass", "--tech", "alice", "--device", "pump-7", "--for", "20m",
              "--reason", "alarm loop on ward three"), None)):
        result = cli(*args, env=env)
        assert result.code == 0, result.err


@pytest.fixture(scope="module")
def populated_backup(_broker_template: Path, tmp_path_factory: pytest.TempPathFactory,
                     cli_for: Callable[[Path], Cli]) -> Path:
    """One backup of a populated broker, shared by the tests that only read or tamper."""
    root = tmp_path_factory.mktemp("populated")
    cli = cli_for(Path(shutil.copytree(_broker_template, root / "broker", symlinks=True)))
    populate(cli)
    archive = root / "b.tar.gz"
    assert cli("backup", "--out", str(archive)).code == 0
    return archive


def one_line(result: CliResult, code: int, *needles: str) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    [line] = result.err_lines
    assert line.startswith("broker: ") and "Traceback" not in result.err
    for needle in needles:
        assert needle in line, line
    return line


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def repack(archive: Path, out: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    """The archive with its members changed by ``change`` (the manifest left as it was)."""
    content = members(archive)
    change(content)
    with tarfile.open(out, "w:gz") as tar:
        for name, body in content.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o600
            tar.addfile(info, io.BytesIO(body))
    return out


def test_backup_then_restore_gives_an_identical_verified_broker(
        cli: Cli, cli_for: Callable[[Path], Cli], broker_run: Any, tmp_path: Path) -> None:
    populate(cli)
    (cli.dir / "recordings" / "s-1").mkdir(parents=True)
    (cli.dir / "recordings" / "s-1" / "term-0.cast").write_text("{}\n")
    database = cli.dir / "data" / "broker.db"
    # Hold a reader open so that the next write stays in the WAL, not in broker.db itself.
    reader = sqlite3.connect(database)
    reader.execute("SELECT count(*) FROM technician").fetchall()
    key = cli.dir / "late.pub"
    key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    assert cli("tech", "add", "late", "--vendor", "BD", "--key", str(key)).code == 0
    raw = tmp_path / "raw-copy.db"
    shutil.copyfile(database, raw)
    with sqlite3.connect(raw) as copy:
        names = [r[0] for r in copy.execute("SELECT name FROM technician")]
    assert names == ["alice"], "precondition: the new row is only in the WAL"

    archive = tmp_path / "backup.tar.gz"
    made = cli("backup", "--out", str(archive), "--json")
    reader.close()
    assert made.code == 0, made.err
    report = json.loads(made.out)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert report["audit"]["ok"] and report["database"] == "sqlite"
    assert "recordings" in report["not_included"]
    content = members(archive)
    manifest = json.loads(content.pop("manifest.json"))
    assert manifest["format"] == "broker-backup" and manifest["recordings"] == "not included"
    assert set(content) == set(manifest["files"])
    for name, body in content.items():
        assert hashlib.sha256(body).hexdigest() == manifest["files"][name]["sha256"], name
    assert {"broker.toml", "data/vault.key", "data/user_ca", "data/ssh_host_ed25519_key",
            "data/recording_ed25519.pem", "data/tls.key", "data/web.key",
            "policies/pumps.yaml", "database/broker.sqlite3"} <= set(content)
    assert not any(n.startswith("recordings") or n.endswith((".db", ".log", "-wal"))
                   for n in content)

    target = tmp_path / "restored"
    restored = broker_run(["restore", str(archive), "--dir", str(target)])
    assert restored.code == 0, restored.err
    assert "audit chain" in restored.out and "intact" in restored.out
    for name in ("broker.toml", "data/vault.key", "data/user_ca", "policies/pumps.yaml"):
        assert (target / name).read_bytes() == (cli.dir / name).read_bytes(), name
    for name in ("data/vault.key", "data/user_ca", "data/tls.key", "data/broker.db"):
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600, name
    assert not list(target.glob(".broker-restore-*"))
    copy_cli = cli_for(target)
    verify, techs, grants = copy_cli.many([("audit", "verify"), ("tech", "list", "--json"),
                                           ("grant", "list", "--unreviewed", "--json")])
    assert verify.code == 0 and "chain intact" in verify.out
    assert sorted(t["name"] for t in json.loads(techs.out)) == ["alice", "late"]
    assert [g["breakglass_reason"] for g in json.loads(grants.out)] == [
        "alarm loop on ward three"]
    # the restored vault key opens the restored device secret: the broker still works
    assert copy_cli("device", "show", "pump-7").code == 0


def test_backup_refuses_an_existing_out_file_and_help_names_recordings(
        cli: Cli, tmp_path: Path) -> None:
    existing = tmp_path / "old.tar"
    existing.write_bytes(b"keep me")
    again, helped = cli.many([("backup", "--out", str(existing)), ("backup", "--help")])
    one_line(again, 1, f"--out {existing} already exists")
    assert existing.read_bytes() == b"keep me"
    assert "Recordings are NOT included" in " ".join(helped.out.split())


def test_restore_never_overwrites_a_broker_or_its_database(
        cli: Cli, broker_run: Any, tmp_path: Path, populated_backup: Path) -> None:
    archive = populated_backup
    before = {p: p.read_bytes() for p in cli.dir.rglob("*") if p.is_file()}
    one_line(broker_run(["restore", str(archive), "--dir", str(cli.dir)]), 1,
             "already exists: restore only into a directory with no broker in it")
    after = {p: p.read_bytes() for p in cli.dir.rglob("*") if p.is_file()}
    assert after == before
    # only the database is there: still refused
    lone = tmp_path / "lone"
    (lone / "data").mkdir(parents=True)
    (lone / "data" / "broker.db").write_bytes(b"precious")
    one_line(broker_run(["restore", str(archive), "--dir", str(lone)]), 1,
             f"{lone / 'data' / 'broker.db'} already exists")
    assert sorted(p.name for p in lone.rglob("*")) == ["broker.db", "data"]


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m.__setitem__("policies/pumps.yaml", m["policies/pumps.yaml"] + b"# x\n"),
     "policies/pumps.yaml does not match its SHA-256 in the manifest"),
    (lambda m: m.__setitem__("data/vault.key", b"A" * 44 + b"\n"),
     "data/vault.key does not match its SHA-256"),
    (lambda m: m.pop("data/user_ca"), "data/user_ca is in the manifest but not in the archive"),
    (lambda m: m.__setitem__("data/extra.key", b"planted"), "'data/extra.key' is not in the"
     " manifest"),
    (lambda m: m.__setitem__("../escape.txt", b"x"), "'../escape.txt' is not a plain file"
     " with a relative path"),
    (lambda m: m.pop("manifest.json"), "no readable manifest.json"),
], ids=["policy edited", "key replaced", "member removed", "member added", "path traversal",
        "no manifest"])
def test_a_tampered_backup_is_refused_before_anything_is_written(
        populated_backup: Path, broker_run: Any, tmp_path: Path,
        tamper: Callable[[dict[str, bytes]], Any], message: str) -> None:
    bad = repack(populated_backup, tmp_path / "bad.tar.gz", tamper)
    target = tmp_path / "restored"
    one_line(broker_run(["restore", str(bad), "--dir", str(target)]), 1, message)
    assert not target.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_garbage_and_missing_files_are_one_line(cli: Cli, broker_run: Any,
                                                tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    one_line(broker_run(["restore", str(garbage), "--dir", str(tmp_path / "t")]), 1,
             "not a broker backup (not a tar archive)")
    one_line(broker_run(["restore", str(tmp_path / "nope.tar"), "--dir", str(tmp_path / "t")]),
             1, "no such backup file")
    one_line(cli("backup", "--out", str(tmp_path / "missing-dir" / "b.tar")), 1,
             "does not exist")


def test_a_backup_of_a_tampered_audit_log_does_not_restore_as_good(
        cli: Cli, broker_run: Any, tmp_path: Path) -> None:
    populate(cli)
    with sqlite3.connect(cli.dir / "data" / "broker.db") as db:
        db.execute("UPDATE audit_event SET actor = 'someone-else' WHERE seq = 2")
    archive = tmp_path / "b.tar.gz"
    made = cli("backup", "--out", str(archive))
    assert made.code == 0 and "BROKEN" in made.out
    target = tmp_path / "restored"
    one_line(broker_run(["restore", str(archive), "--dir", str(target)]), 1,
             "the audit chain of the restored database is broken", "do not use this copy")


def test_postgresql_backup_needs_pg_dump(cli: Cli, tmp_path: Path) -> None:
    result = cli("backup", "--out", str(tmp_path / "b.tar"), env={
        "BROKER_BROKER_DATABASE_URL": "postgresql+asyncpg://broker@127.0.0.1:1/broker",
        "PATH": str(tmp_path / "empty-bin")})
    one_line(result, 1, "pg_dump is not on PATH", "apt-get install postgresql-client")


def test_postgresql_round_trip_with_pg_dump_and_pg_restore(
        cli: Cli, broker_run: Any, tmp_path: Path) -> None:
    from tests.pg_kit import PostgresCluster

    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore missing (apt-get install postgresql-client)")
    cluster = PostgresCluster().start()
    try:
        source_url = cluster.create_database()
        on_pg = {"BROKER_BROKER_DATABASE_URL": source_url}
        assert cli("migrate", env=on_pg).code == 0
        key = cli.dir / "alice.pub"
        key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key()
                       .decode())
        assert cli("tech", "add", "alice", "--vendor", "BD", "--key", str(key),
                   env=on_pg).code == 0
        config = cli.config.read_text().replace('database_url = "sqlite:///data/broker.db"',
                                                f'database_url = "{source_url}"')
        cli.config.write_text(config)
        archive = tmp_path / "pg.tar.gz"
        made = cli("backup", "--out", str(archive), "--json")
        assert made.code == 0, made.err
        assert "database/broker.pgdump" in json.loads(made.out)["files"]

        target = tmp_path / "restored"
        # the backup's broker.toml names the source database, which is not empty
        one_line(broker_run(["restore", str(archive), "--dir", str(target)]), 1,
                 "is not empty: restore only into an empty database")
        assert not target.exists()
        empty = {"BROKER_BROKER_DATABASE_URL": cluster.create_database()}
        restored = broker_run(["restore", str(archive), "--dir", str(target)], env=empty)
        assert restored.code == 0, restored.err
        copy = broker_run(["--config", str(target / "broker.toml"), "tech", "list", "--json"],
                          env=empty)
        assert [t["name"] for t in json.loads(copy.out)] == ["alice"]
        verify = broker_run(["--config", str(target / "broker.toml"), "audit", "verify"],
                            env=empty)
        assert verify.code == 0 and "chain intact" in verify.out
    finally:
        cluster.stop()
