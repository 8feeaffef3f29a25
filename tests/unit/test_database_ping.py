"""Store.ping(): whether the database answers, asked outside the connection pool, so that a
pool busy with a thousand sessions' checks is never mistaken for a database that is away (the
watchdog behind fail-closed uses it; bench/sessions.py found the mistake)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.aio import within
from broker.errors import StoreError
from broker.store.engine import Store

POOL_LIMIT = 15  # SQLAlchemy's default pool: 5 connections and 10 more on overflow


async def test_ping_answers_while_every_pooled_connection_is_busy(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}")
    await store.migrate()
    held = [await store.engine.connect() for _ in range(POOL_LIMIT)]
    try:
        with pytest.raises(TimeoutError):  # what the watchdog asked before: queued in the pool
            await within(1.0, store.current_revision())
        await within(1.0, store.ping())
    finally:
        for connection in held:
            await connection.close()
        await store.close()


async def test_ping_fails_as_one_store_error_when_the_database_is_away(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "broker.db"
    store = Store(f"sqlite+aiosqlite:///{missing}")
    try:
        with pytest.raises(StoreError, match="cannot use database"):
            await store.ping()
    finally:
        await store.close()


async def test_ping_fails_when_the_schema_is_missing(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(StoreError, match="alembic_version"):
            await store.ping()
    finally:
        await store.close()
