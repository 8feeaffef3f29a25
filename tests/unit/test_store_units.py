"""Units of work on SQLite: writes queue in the process for the writer lock (never polling in
SQLite's busy handler), reads run beside them on connections that cannot write, and a
failing or nested unit never leaves the queue stuck (bench/opening.py found the polling)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session, select

from broker.aio import within
from broker.errors import DuplicateRow, StoreError
from broker.store.engine import Store
from broker.store.models import Vendor
from tests.pg_kit import PostgresCluster

NOW = datetime(2026, 12, 4, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}")
    await store.migrate()
    yield store
    await store.close()


def vendor(name: str) -> Vendor:
    return Vendor(name=name, domains=[], created_at=NOW)


async def names(store: Store) -> set[str]:
    async with store.reading() as db:
        return {v.name for v in (await db.exec(select(Vendor))).all()}


async def test_a_read_unit_cannot_write(store: Store) -> None:
    with pytest.raises(StoreError, match="readonly database"):
        async with store.reading() as db:
            db.add(vendor("Sneaky"))
    assert await names(store) == set()


async def test_reads_run_beside_a_write_and_see_only_what_is_committed(store: Store) -> None:
    inside, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with store.session() as db:
            db.add(vendor("Acme"))
            await db.flush()
            inside.set()
            await release.wait()

    task = asyncio.ensure_future(writer())
    await inside.wait()
    # the writer holds SQLite's writer lock: a read neither waits for it nor sees its row
    assert await within(2, names(store)) == set()
    release.set()
    await task
    assert await names(store) == {"Acme"}


async def test_writes_queue_in_order_and_a_failed_one_frees_the_queue(store: Store) -> None:
    order: list[str] = []

    async def write(name: str, fail: bool = False) -> None:
        async with store.session() as db:
            order.append(f"{name} begins")
            db.add(vendor(name))
            await asyncio.sleep(0.05)  # others are waiting meanwhile
            if fail:
                raise RuntimeError("the unit fails")
            order.append(f"{name} commits")

    results = await asyncio.gather(write("A"), write("B", fail=True), write("C"),
                                   return_exceptions=True)
    assert isinstance(results[1], RuntimeError) and results[0] is None and results[2] is None
    assert order == ["A begins", "A commits", "B begins", "C begins", "C commits"]
    assert await names(store) == {"A", "C"}


async def test_a_unit_inside_a_unit_does_not_wait_for_itself(store: Store) -> None:
    async with store.session() as db:
        db.add(vendor("Outer"))
        assert await within(2, names(store)) == set()  # a read inside a write
    async with store.session() as db:  # the queue is free again
        db.add(vendor("Next"))
    assert await names(store) == {"Outer", "Next"}


async def test_a_write_that_cannot_get_its_turn_is_one_store_error(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("broker.store.engine.BUSY_TIMEOUT", 0.2)
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.session():
            inside.set()
            await release.wait()

    task = asyncio.ensure_future(holder())
    await inside.wait()
    try:
        with pytest.raises(StoreError, match=r"busy for 0\.2 s"):
            async with store.session():
                pass
    finally:
        release.set()
        await task


async def test_on_postgresql_reading_is_a_plain_unit(postgres: PostgresCluster) -> None:
    store = Store(postgres.create_database())
    await store.migrate()
    try:
        async with store.session() as db:
            db.add(vendor("Acme"))
        assert await names(store) == {"Acme"}
    finally:
        await store.close()


# -- units written as plain functions (Store.run / run_write) -------------------------------

def add_vendor(db: Session, name: str, fail: bool = False) -> str:
    db.add(vendor(name))
    db.flush()
    if fail:
        raise RuntimeError("the unit fails")
    return threading.current_thread().name


def vendor_names(db: Session) -> set[str]:
    return {v.name for v in db.exec(select(Vendor)).all()}


async def test_a_function_unit_commits_when_it_returns_and_rolls_back_when_it_raises(
        store: Store) -> None:
    thread = await store.run_write(add_vendor, "Acme")
    assert thread.startswith("store")  # SQLite: run whole in one of the store's threads
    with pytest.raises(RuntimeError):
        await store.run_write(add_vendor, "Gone", fail=True)
    assert await store.run(vendor_names) == {"Acme"} == await names(store)


async def test_a_function_unit_maps_database_errors_as_other_units_do(store: Store) -> None:
    await store.run_write(add_vendor, "Acme")
    with pytest.raises(DuplicateRow, match=r"UNIQUE constraint failed: vendor\.name"):
        await store.run_write(add_vendor, "Acme")
    with pytest.raises(StoreError, match="readonly database"):
        await store.run(add_vendor, "Sneaky")  # a read unit cannot write
    assert await names(store) == {"Acme"}


async def test_function_writes_queue_with_the_other_writes(store: Store) -> None:
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with store.session() as db:
            db.add(vendor("First"))
            inside.set()
            await release.wait()

    task = asyncio.ensure_future(holder())
    await inside.wait()
    write = asyncio.ensure_future(store.run_write(add_vendor, "Second"))
    assert await within(2, store.run(vendor_names)) == set()  # reads do not queue
    await asyncio.sleep(0.1)
    assert not write.done()  # the write waits its turn in the process, not in SQLite
    release.set()
    await task
    await within(5, write)
    assert await names(store) == {"First", "Second"}


async def test_a_cancelled_function_write_ends_before_the_queue_moves_on(store: Store) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(db: Session) -> None:
        db.add(vendor("Slow"))
        db.flush()  # SQLite's writer lock is held from here
        started.set()
        release.wait(5)

    write = asyncio.ensure_future(store.run_write(slow))
    await asyncio.to_thread(started.wait, 5)
    write.cancel()
    nxt = asyncio.ensure_future(store.run_write(add_vendor, "Next"))
    await asyncio.sleep(0.1)
    assert not write.done() and not nxt.done()  # the started unit runs to its end first
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await write
    await within(5, nxt)
    assert await names(store) == {"Slow", "Next"}


def thread_and_names(db: Session) -> tuple[str, set[str]]:
    return threading.current_thread().name, vendor_names(db)


async def test_a_read_unit_runs_on_the_event_loops_thread(store: Store) -> None:
    await store.run_write(add_vendor, "Acme")
    # no hand-over to a thread and back: a read unit costs less CPU than that
    assert await store.run(thread_and_names) == (threading.current_thread().name, {"Acme"})


async def test_a_read_that_would_wait_for_a_lock_waits_in_a_store_thread(
        tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    migrated = Store(f"sqlite+aiosqlite:///{path}")
    await migrated.migrate()
    await migrated.run_write(add_vendor, "Acme")
    await migrated.close()
    # another process holds the database whole: a WAL reader must wait for it
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO vendor (name, domains, created_at) VALUES ('Late', '[]',"
                   " '2026-12-04 00:00:00')")
    holder.execute("COMMIT")
    store = Store(f"sqlite+aiosqlite:///{path}")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.ensure_future(ticker())
    try:
        read = asyncio.ensure_future(store.run(thread_and_names))
        await asyncio.sleep(0.5)
        assert not read.done()
        assert ticks >= 20  # the event loop went on meanwhile
        holder.close()
        thread, found = await within(10, read)
        assert thread.startswith("store") and found == {"Acme", "Late"}
        # the lock gone, reads run on this thread again
        assert (await store.run(thread_and_names))[0] == threading.current_thread().name
    finally:
        beating.cancel()
        holder.close()
        await store.close()


async def test_on_postgresql_a_function_unit_runs_in_an_async_unit(
        postgres: PostgresCluster) -> None:
    store = Store(postgres.create_database())
    await store.migrate()
    try:
        assert await store.run_write(add_vendor, "Acme") == threading.current_thread().name
        with pytest.raises(DuplicateRow):
            await store.run_write(add_vendor, "Acme")
        assert await store.run(vendor_names) == {"Acme"}
    finally:
        await store.close()
