"""The SQLite change probe behind the polling change feed: it must see every commit made by
any other connection, and say "changed" whenever it cannot tell."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
    assert SQLiteChangeProbe(tmp_path / "junk.sqlite").changed()


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
