"""Who writes the signed audit checkpoints, and when: ``broker serve`` (each second the head
moved, a heartbeat, start and clean shutdown, one chain per node, several nodes on one
PostgreSQL), CLI processes as they exit, and the first run after upgrading an old database.
Also the owner-only modes of the SQLite database files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, delete, select

from broker.audit import checkpoints
from broker.audit.checkpoints import Checkpointer
from broker.audit.checks import verify_checkpoints
from broker.config import load_config
from broker.recording.manifest import signer_for
from broker.services.context import Context
from broker.store.models import AuditCheckpoint, AuditEvent
from broker.testing import FakeClock
from tests.conftest import Cli
from tests.integration.harness import BrokerProcess
from tests.pg_kit import PostgresCluster
from tests.security.evidence_kit import activity, database, fails_with, sql


@pytest.fixture
async def clocked(broker_dir: Path) -> AsyncIterator[tuple[Context, FakeClock]]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    try:
        yield ctx, clock
    finally:
        await ctx.close()


async def _state(ctx: Context) -> tuple[list[AuditEvent], list[AuditCheckpoint]]:
    async with ctx.store.session() as db:
        rows = list((await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all())
        return rows, await checkpoints.load(db)


async def _event(ctx: Context, n: int) -> None:
    async with ctx.store.session() as db:
        await ctx.audit(db, "test.event", "tester", f"thing:{n}")


async def _one_second(clock: FakeClock, seconds: float = 1) -> None:
    """Move the fake clock and let the checkpointer finish the tick it wakes up for."""
    clock.advance(seconds)
    async with asyncio.timeout(10):
        await clock.wait_for_sleepers(1)


async def test_serve_checkpoints_each_second_heartbeat_and_shutdown(clocked) -> None:
    ctx, clock = clocked
    signer = signer_for(ctx.config)
    keeper = Checkpointer(ctx, signer)
    assert (await keeper.start()).kind == "start"
    task = asyncio.create_task(keeper.run())
    try:
        async with asyncio.timeout(10):
            await clock.wait_for_sleepers(1)
        await _event(ctx, 1)
        await _event(ctx, 2)
        await _one_second(clock)
        rows, cps = await _state(ctx)
        assert [(c.kind, c.seq) for c in cps] == [("start", 0), ("periodic", 2)]
        assert cps[1].hash == rows[-1].hash and cps[1].prev == cps[0].digest
        await _one_second(clock)  # nothing new: no checkpoint
        assert len((await _state(ctx))[1]) == 2
        await _one_second(clock, 60)  # the heartbeat
        assert [c.kind for c in (await _state(ctx))[1]] == ["start", "periodic", "periodic"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await keeper.stop()
    rows, cps = await _state(ctx)
    assert cps[-1].kind == "shutdown"
    assert verify_checkpoints(rows, cps, signer.public_key, clock.now()) == []
    # a day later, the broker still stopped cleanly: still nothing to report
    later = clock.now() + timedelta(days=1)
    assert verify_checkpoints(rows, cps, signer.public_key, later) == []


async def test_deleted_checkpoints_and_an_unclean_stop_are_seen(clocked) -> None:
    ctx, clock = clocked
    signer = signer_for(ctx.config)
    keeper = Checkpointer(ctx, signer)
    await keeper.start()
    for n in range(3):
        await _event(ctx, n)
        clock.advance(1)
        await keeper.tick()
    await keeper.stop()
    rows, cps = await _state(ctx)
    # the attacker deletes the newest rows and every checkpoint naming them, shutdown too
    async with ctx.store.session() as db:
        await db.exec(delete(AuditEvent).where(col(AuditEvent.seq) > 1))  # type: ignore[call-overload]
        await db.exec(delete(AuditCheckpoint).where(col(AuditCheckpoint.seq) > 1))  # type: ignore[call-overload]
    rows, cps = await _state(ctx)
    later = clock.now() + timedelta(minutes=5)
    found = [str(f) for f in verify_checkpoints(rows, cps, signer.public_key, later)]
    assert len(found) == 1 and "is not a clean shutdown" in found[0], found
    # a middle checkpoint deleted breaks the node's checkpoint chain
    await keeper.start()
    async with ctx.store.session() as db:
        await db.exec(delete(AuditCheckpoint).where(col(AuditCheckpoint.id) == cps[-1].id))  # type: ignore[call-overload]
    rows, cps = await _state(ctx)
    found = [str(f) for f in verify_checkpoints(rows, cps, signer.public_key, clock.now())]
    assert any("follows a checkpoint of" in f and "that is gone" in f for f in found), found
    assert any(r.kind == "audit.unclean_stop" for r in rows)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_signs_what_the_cli_writes_and_leaves_a_shutdown_marker(
        broker_dir: Path, cli: Cli) -> None:
    broker = BrokerProcess(broker_dir)
    broker.config.write_text(broker.config.read_text().replace(
        'listen = "0.0.0.0:2222"', f'listen = "127.0.0.1:{broker.port}"').replace(
        'listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{broker.http_port}"'))
    db = database(cli)
    assert _mode(db) == 0o600
    broker.serve()
    try:
        activity(cli, technicians=1)
        for suffix in ("", "-wal", "-shm"):  # serve keeps the WAL open
            assert _mode(db.with_name(db.name + suffix)) == 0o600, suffix
        time.sleep(2.5)
        with sqlite3.connect(db) as connection:
            kinds = [r[0] for r in connection.execute(
                "SELECT kind FROM audit_checkpoint ORDER BY id")]
        assert kinds[0] == "start" and "cli" in kinds and "periodic" in kinds, kinds
    finally:
        broker.stop()
    with sqlite3.connect(db) as connection:
        last = connection.execute("SELECT kind FROM audit_checkpoint ORDER BY id DESC").fetchone()
    assert last == ("shutdown",)
    result = cli("audit", "verify")
    assert result.code == 0 and "chain intact" in result.out, result.out + result.err


def test_the_wal_files_a_cli_write_creates_are_owner_only(cli: Cli) -> None:
    db = database(cli)
    reader = sqlite3.connect(db)  # keeps the WAL from being folded back at exit
    try:
        reader.execute("SELECT count(*) FROM audit_event").fetchall()
        activity(cli, technicians=1)
        for suffix in ("", "-wal", "-shm"):
            assert _mode(db.with_name(db.name + suffix)) == 0o600, suffix
    finally:
        reader.close()


def test_init_makes_every_data_file_that_holds_secrets_or_evidence_owner_only(
        broker_dir: Path) -> None:
    public = {"ssh_host_ed25519_key.pub", "user_ca.pub", "tls.crt"}
    for path in (broker_dir / "data").iterdir():
        if path.name not in public:
            assert _mode(path) == 0o600, path.name


def test_an_existing_database_is_made_owner_only(cli: Cli) -> None:
    db = database(cli)
    db.chmod(0o644)
    assert cli("audit", "verify").code == 0
    assert _mode(db) == 0o600


async def test_two_nodes_on_postgresql_checkpoint_one_chain(
        postgres: PostgresCluster, tmp_path: Path) -> None:
    url = postgres.create_database()
    first = BrokerProcess(tmp_path / "a").init().use_database(url, "node-a")
    second = first.another_node(tmp_path / "b", "node-b")
    first.serve()
    second.serve()
    try:
        for n in range(3):
            first.add_tech(f"alice{n}")
            second.add_tech(f"bob{n}")
        await asyncio.sleep(2.5)
    finally:
        first.stop()
        second.stop()
    nodes = postgres.psql("SELECT node || ':' || kind FROM audit_checkpoint ORDER BY id",
                          database=url.rsplit("/", 1)[1]).splitlines()
    for node in ("node-a", "node-b"):
        assert f"{node}:start" in nodes and f"{node}:shutdown" in nodes, nodes
    verified = first.cli("audit", "verify", check=False)
    assert verified.code == 0, verified.out + verified.err
    postgres.psql("DELETE FROM audit_event WHERE seq = (SELECT max(seq) FROM audit_event)",
                  database=url.rsplit("/", 1)[1])
    tampered = first.cli("audit", "verify", check=False)
    assert tampered.code == 1, tampered.out
    assert "row" in tampered.out and "deleted" in tampered.out, tampered.out


async def test_an_old_database_is_upgraded_with_an_audited_note(cli: Cli) -> None:
    """A database at revision 0009 with history: migrating marks that history as hash-chained
    only, the first write signs the head and says so in the chain, verify keeps the note."""
    from alembic import command

    from broker.store.engine import Store, alembic_config

    db = database(cli)
    db.unlink()
    store = Store(f"sqlite+aiosqlite:///{db}")
    try:
        async with store.engine.connect() as connection:
            def upgrade(sync: object) -> None:
                config = alembic_config()
                config.attributes["connection"] = sync
                command.upgrade(config, "0009")
            await connection.run_sync(upgrade)
            await connection.commit()
        from broker.audit import record
        for n in range(3):
            async with store.session() as session:
                await record(session, datetime.now(UTC), "test.old", "tester", f"old:{n}")
    finally:
        await store.close()
    assert cli("migrate").code == 0
    result = cli("audit", "verify")
    assert result.code == 0, result.out
    assert "note: audit rows 1-3 predate signed checkpoints" in result.out
    activity(cli, technicians=1)  # the first write with the key signs the head
    tail = cli("audit", "tail", "--json")
    kinds = [r["kind"] for r in json.loads(tail.out)]
    assert kinds == ["test.old"] * 3 + ["vendor.added", "technician.added",
                                        "audit.signing_started"]
    result = cli("audit", "verify")
    assert result.code == 0 and "note: audit rows 1-3 predate" in result.out, result.out
    # the legacy marker cannot be slipped in after signed checkpoints
    sql(db, "INSERT INTO audit_checkpoint (node, kind, seq, hash, at, prev, digest, signature)"
            " SELECT 'x', 'legacy', seq, hash, '2026-01-01 00:00:00', NULL, 'd', '' FROM"
            " audit_event ORDER BY seq DESC LIMIT 1")
    fails_with(cli("audit", "verify"), "an unsigned checkpoint after signed ones")
