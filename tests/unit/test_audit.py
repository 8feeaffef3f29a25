"""The hash-chained audit log on a real SQLite store: appends, tampering, concurrency, logging."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from structlog.testing import capture_logs

from broker.audit import ChainProblem, iter_events, record, verify_rows
from broker.audit.chain import GENESIS, canonical, link_hash
from broker.audit.logging import configure_logging, redact_secrets
from broker.store.engine import Store
from broker.store.models import AuditEvent
from broker.testing import FakeClock

if TYPE_CHECKING:
    from conftest import Cli

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{db_path}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def append(store: Store, count: int, clock: FakeClock | None = None) -> None:
    clock = clock or FakeClock(T0)
    for n in range(count):
        async with store.session() as db:
            await record(db, clock.now(), "test.event", "tester", f"thing:{n}", n=n,
                         note=f"event {n}")
        clock.advance(timedelta(seconds=1))


async def rows(store: Store) -> list[AuditEvent]:
    async with store.session() as db:
        return [row async for row in iter_events(db)]


async def problems(store: Store) -> list[ChainProblem]:
    _count, found = verify_rows(await rows(store))
    return found


def sql(db_path: Path, statement: str, *params: Any) -> None:
    with sqlite3.connect(db_path) as connection:
        connection.execute(statement, params)


def select(db_path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as connection:
        return connection.execute(statement, params).fetchall()


async def test_appended_events_verify(store: Store) -> None:
    await append(store, 5)
    chain = await rows(store)
    assert [r.seq for r in chain] == [1, 2, 3, 4, 5]
    assert chain[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
    assert json.loads(chain[2].data) == {"n": 2, "note": "event 2"}
    assert chain[2].ts == T0 + timedelta(seconds=2)
    assert verify_rows(chain) == (5, [])


async def test_empty_chain_verifies(store: Store) -> None:
    assert verify_rows(await rows(store)) == (0, [])


async def test_hash_covers_every_field(store: Store) -> None:
    await append(store, 1)
    (row,) = await rows(store)
    body = canonical(row.seq, row.ts, row.kind, row.actor, row.subject, json.loads(row.data))
    assert link_hash(GENESIS, body) == row.hash
    for change in ({"kind": "x"}, {"actor": "x"}, {"subject": "x"}, {"seq": 2},
                   {"ts": row.ts + timedelta(microseconds=1)}):
        fields = {"seq": row.seq, "ts": row.ts, "kind": row.kind, "actor": row.actor,
                  "subject": row.subject, **change}
        altered = canonical(fields["seq"], fields["ts"], fields["kind"], fields["actor"],
                            fields["subject"], json.loads(row.data))
        assert link_hash(GENESIS, altered) != row.hash, change


async def test_changed_data_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 5)
    sql(db_path, "UPDATE audit_event SET data = ? WHERE seq = 3", json.dumps({"n": 99}))
    found = await problems(store)
    assert [(p.seq, p.message) for p in found] == [(3, "was changed after it was written "
                                                       "(test.event)")]
    assert str(found[0]).startswith("audit row 3:")


@pytest.mark.parametrize(("column", "value"), [
    ("actor", "someone-else"), ("kind", "test.other"), ("subject", "thing:x"),
    ("ts", "2020-01-01 00:00:00.000000"),
])
async def test_changed_column_is_detected(store: Store, db_path: Path, column: str,
                                          value: str) -> None:
    await append(store, 3)
    sql(db_path, f"UPDATE audit_event SET {column} = ? WHERE seq = 2", value)
    assert [p.seq for p in await problems(store)] == [2]


async def test_deleted_middle_row_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 5)
    sql(db_path, "DELETE FROM audit_event WHERE seq = 3")
    found = await problems(store)
    assert len(found) == 1
    assert found[0].seq == 4 and "row 3 is missing (deleted)" in found[0].message


async def test_deleted_run_of_rows_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 6)
    sql(db_path, "DELETE FROM audit_event WHERE seq BETWEEN 2 AND 4")
    found = await problems(store)
    assert [p.seq for p in found] == [5] and "rows 2-4 are missing" in found[0].message


async def test_deleted_first_row_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 3)
    sql(db_path, "DELETE FROM audit_event WHERE seq = 1")
    assert [p.seq for p in await problems(store)] == [2]


async def test_forged_row_inserted_and_renumbered_is_detected(store: Store,
                                                              db_path: Path) -> None:
    """A forger who knows the algorithm inserts a row after 2 and renumbers the rest."""
    await append(store, 4)
    chain = await rows(store)
    sql(db_path, "UPDATE audit_event SET seq = seq + 1000 WHERE seq >= 3")
    sql(db_path, "UPDATE audit_event SET seq = seq - 999 WHERE seq > 1000")
    # the forged row links correctly to row 2; its prev_hash must be unique, so the old row
    # 3 (now 4) gets the forged row's hash as its prev_hash, as an honest chain would have
    ts = chain[1].ts + timedelta(milliseconds=1)
    body = canonical(3, ts, "grant.revoked", "admin", "grant:1", {})
    forged_hash = link_hash(chain[1].hash, body)
    sql(db_path, "UPDATE audit_event SET prev_hash = ? WHERE seq = 4", forged_hash)
    sql(db_path, "INSERT INTO audit_event (seq, ts, kind, actor, subject, data, prev_hash, hash)"
        " VALUES (3, ?, 'grant.revoked', 'admin', 'grant:1', '{}', ?, ?)",
        ts.strftime("%Y-%m-%d %H:%M:%S.%f"), chain[1].hash, forged_hash)
    count, found = verify_rows(await rows(store))
    assert count == 5
    assert 3 not in {p.seq for p in found}  # the forged row itself is well formed...
    assert {4, 5} <= {p.seq for p in found}  # ...but every renumbered row after it breaks


async def test_inserted_row_with_made_up_hash_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 3)
    sql(db_path, "INSERT INTO audit_event (seq, ts, kind, actor, subject, data, prev_hash, hash)"
        " VALUES (4, '2026-03-02 10:00:10.000000', 'x', 'y', NULL, '{}', ?, ?)",
        "f" * 64, "e" * 64)
    found = await problems(store)
    assert {p.seq for p in found} == {4}
    assert any("does not link" in p.message for p in found)


async def test_swapped_data_is_detected(store: Store, db_path: Path) -> None:
    await append(store, 5)
    (two,), (four,) = (select(db_path, "SELECT data FROM audit_event WHERE seq = ?", n)[0]
                       for n in (2, 4))
    sql(db_path, "UPDATE audit_event SET data = ? WHERE seq = 2", four)
    sql(db_path, "UPDATE audit_event SET data = ? WHERE seq = 4", two)
    assert [p.seq for p in await problems(store)] == [2, 4]


async def test_concurrent_appends_keep_the_chain_linear(store: Store, db_path: Path) -> None:
    async def worker(n: int) -> None:
        for i in range(3):
            async with store.session() as db:
                await record(db, T0, "test.concurrent", f"worker-{n}", None, i=i)
                await asyncio.sleep(0)  # give the other tasks a chance to interleave

    await asyncio.gather(*(worker(n) for n in range(20)))
    chain = await rows(store)
    assert [r.seq for r in chain] == list(range(1, 61))
    assert len({r.prev_hash for r in chain}) == 60
    assert verify_rows(chain) == (60, [])
    assert select(db_path, "SELECT COUNT(DISTINCT prev_hash) FROM audit_event") == [(60,)]


async def test_prev_hash_is_unique_in_the_schema(store: Store, db_path: Path) -> None:
    await append(store, 2)
    with pytest.raises(sqlite3.IntegrityError):
        sql(db_path, "UPDATE audit_event SET prev_hash = ? WHERE seq = 2", GENESIS)


async def test_log_line_only_after_commit(store: Store) -> None:
    with capture_logs() as logs:
        async with store.session() as db:
            await record(db, T0, "grant.revoked", "admin", "grant:7", reason="done")
            await db.flush()
            assert logs == []  # written to the chain, not yet committed: no line
        assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "audit" and line["kind"] == "grant.revoked"
    assert line["actor"] == "admin" and line["subject"] == "grant:7"
    assert line["reason"] == "done" and line["seq"] == 1
    assert line["hash"] == (await rows(store))[0].hash


async def test_no_log_line_for_a_rolled_back_transaction(store: Store) -> None:
    with capture_logs() as logs:
        with pytest.raises(RuntimeError):
            async with store.session() as db:
                await record(db, T0, "request.created", "tech", "request:1")
                raise RuntimeError("boom")
        assert logs == []
        assert await rows(store) == []
        # the same session object rolled back, then committed: only the second event logs
        async with store.session() as db:
            await record(db, T0, "first", "a")
            await db.rollback()
            await record(db, T0, "second", "b")
        assert [line["kind"] for line in logs] == ["second"]
    assert [r.kind for r in await rows(store)] == ["second"]


async def test_secret_data_is_redacted_in_the_log_line(store: Store) -> None:
    stream = io.StringIO()
    configure_logging(stream)
    try:
        async with store.session() as db:
            await record(db, T0, "device.rotated", "broker", "pump", new_password="hunter2",
                         device="pump")
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue().strip())
    assert line["new_password"] == "[redacted]" and line["device"] == "pump"
    assert "hunter2" not in stream.getvalue()
    assert line["kind"] == "device.rotated" and line["level"] == "info"


def test_redact_secrets() -> None:
    event = {"event": "login", "user": "alice", "password": "p", "API_TOKEN": "t",
             "totp_code": "123456", "client_secret": "s", "private_key": "k",
             "credential_id": 3, "passphrase": "x"}
    out = redact_secrets(None, "info", dict(event))
    for key in ("password", "API_TOKEN", "totp_code", "client_secret", "private_key",
                "credential_id"):
        assert out[key] == "[redacted]", key
    assert out["event"] == "login" and out["user"] == "alice"


# --- the CLI ----------------------------------------------------------------------------------

async def seed(db: Path) -> None:
    """Three events: one two days old, two from now (written in-process: the CLI is slow)."""
    store = Store(f"sqlite+aiosqlite:///{db}")
    now = datetime.now(UTC)
    try:
        for ts, name in ((now - timedelta(days=2), "old"), (now, "appr1"), (now, "appr2")):
            async with store.session() as session:
                await record(session, ts, "approver.added", "cli:test", name, groups=[])
    finally:
        await store.close()


async def test_cli_audit_verify_and_export(cli: Cli) -> None:
    from broker.audit.checkpoints import write_checkpoint
    from broker.config import load_config
    from broker.recording.manifest import signer_for
    from broker.services.context import Context

    db = cli.dir / "data" / "broker.db"
    await seed(db)
    ctx = Context.open(load_config(cli.config))
    try:  # what the broker process that wrote them would have done: sign the head
        await write_checkpoint(ctx, signer_for(ctx.config), "cli")
    finally:
        await ctx.close()
    clean, csv_out, jsonl_out = cli.many([
        ("audit", "verify"),
        ("audit", "export", "--format", "csv", "--since", "1h"),
        ("audit", "export", "--format", "jsonl", "--since", "1h"),
    ])
    assert clean.code == 0, clean.err
    assert clean.out.strip() == "ok: 3 audit rows, chain intact, 1 checkpoint"

    assert csv_out.code == 0, csv_out.err
    table = list(csv.DictReader(io.StringIO(csv_out.out)))
    assert [int(r["seq"]) for r in table] == [2, 3]  # --since 1h leaves out the old row
    assert [r["subject"] for r in table] == ["appr1", "appr2"]
    assert all(json.loads(r["data"]) == {"groups": []} for r in table)
    assert all(len(r["hash"]) == 64 and len(r["prev_hash"]) == 64 for r in table)
    assert table[1]["prev_hash"] == table[0]["hash"]

    assert jsonl_out.code == 0, jsonl_out.err
    lines = [json.loads(line) for line in jsonl_out.out.splitlines()]
    assert [(r["seq"], r["subject"], r["data"]) for r in lines] == [
        (2, "appr1", {"groups": []}), (3, "appr2", {"groups": []})]
    assert datetime.fromisoformat(lines[0]["ts"]).tzinfo is not None

    sql(db, "UPDATE audit_event SET actor = 'nobody' WHERE seq = 2")
    tampered, as_json = cli.many([("audit", "verify"), ("audit", "verify", "--json")])
    assert tampered.code == 1
    assert tampered.out.strip() == "audit row 2: was changed after it was written (approver.added)"
    assert tampered.err_lines == ["broker: audit log does not verify: 1 problem(s)"]
    assert as_json.code == 1
    report = json.loads(as_json.out)
    assert report["ok"] is False and report["rows"] == 3
    assert [p["seq"] for p in report["problems"]] == [2]
