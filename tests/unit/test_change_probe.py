"""The SQLite change probe behind the polling change feed: it must see every commit made by
any other connection, and say "changed" whenever it cannot tell."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from broker.aio import within
from broker.audit.chain import record
from broker.revocation.feed import PollingFeed
from broker.store.engine import Store
from broker.store.probe import SQLiteChangeProbe


def _database(path: Path) -> sqlite3.Connection:
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    return writer


def test_a_commit_by_another_connection_is_seen_once(tmp_path: Path) -> None:
    writer = _database(tmp_path / "db.sqlite")
    probe = SQLiteChangeProbe(tmp_path / "db.sqlite")
    assert probe.changed()  # the first call has nothing to compare with
    assert not probe.changed()
    writer.execute("INSERT INTO t VALUES (1)")
    assert probe.changed()
    assert not probe.changed()
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (2)")
    assert not probe.changed()  # not committed yet
    writer.execute("COMMIT")
    assert probe.changed()
    probe.close()
    writer.close()


def test_a_rolled_back_transaction_is_no_change(tmp_path: Path) -> None:
    writer = _database(tmp_path / "db.sqlite")
    probe = SQLiteChangeProbe(tmp_path / "db.sqlite")
    probe.changed()
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.execute("ROLLBACK")
    assert not probe.changed()
    probe.close()
    writer.close()


def test_a_missing_file_reads_as_changed_and_is_not_created(tmp_path: Path) -> None:
    probe = SQLiteChangeProbe(tmp_path / "nothing-here.sqlite")
    assert probe.changed()
    assert probe.changed()  # still cannot tell: the caller keeps querying
    assert not (tmp_path / "nothing-here.sqlite").exists()


def test_a_file_that_is_not_a_database_reads_as_changed(tmp_path: Path) -> None:
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    probe = SQLiteChangeProbe(tmp_path / "junk.sqlite")
    assert probe.changed()
    assert probe.changed()  # not just the first call: it can never tell, so always "changed"


async def test_only_sqlite_files_get_a_probe(tmp_path: Path) -> None:
    on_file = Store(f"sqlite+aiosqlite:///{tmp_path / 'broker.sqlite'}")
    probe = on_file.change_probe()
    assert probe is not None and probe.path == tmp_path / "broker.sqlite"
    in_memory = Store("sqlite+aiosqlite:///:memory:")
    assert in_memory.change_probe() is None
    postgres = Store("postgresql+asyncpg://u@localhost/db")
    assert postgres.change_probe() is None
    for store in (on_file, in_memory, postgres):
        await store.close()


class _BlipOnce(PollingFeed):
    """The real feed, whose next read of the audit chain fails once (a database blip)."""

    blip = False

    async def _read(self, last: int | None) -> tuple[int, list[tuple[str, datetime]]]:
        if self.blip:
            self.blip = False
            raise OSError("database is locked")
        return await super()._read(last)


async def test_a_change_whose_first_read_fails_is_still_delivered(tmp_path: Path) -> None:
    """The probe reports a commit once; if reading the head then fails, the feed must keep
    reading until it succeeds, or a revocation would wait for the next unrelated commit."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'broker.sqlite'}")
    await store.migrate()
    feed = _BlipOnce(SimpleNamespace(store=store), interval=0.01)  # type: ignore[arg-type]
    seen: asyncio.Queue[list[str]] = asyncio.Queue()

    async def on_change(kinds: list[str]) -> None:
        await seen.put(kinds)

    async def on_resync() -> None:
        return None

    task = asyncio.ensure_future(feed.run(on_change, on_resync))
    try:
        await asyncio.sleep(0.1)  # the feed has its baseline
        feed.blip = True
        async with store.session() as db:
            await record(db, datetime.now(UTC), "grant.revoked", "test", "grant:1")
        assert await within(5, seen.get()) == ["grant.revoked"]
        assert not feed.blip  # the first read did fail
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
