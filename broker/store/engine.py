"""The async engine, sessions, and the migration check ``broker serve`` makes before it starts."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, SingletonThreadPool
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.aio import within
from broker.errors import DuplicateRow, StoreError
from broker.store.probe import SQLiteChangeProbe

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration under migrations/versions, which every command checks the database
# against: known here so that a command need not import alembic (a tenth of a second) and
# read every migration to learn it (tests/unit/test_schema_head.py holds it to alembic's).
SCHEMA_HEAD = "0016"
_REVISIONS = "SELECT version_num FROM alembic_version"


SQLITE_FILES = ("", "-wal", "-shm", "-journal")
BUSY_TIMEOUT = 10.0  # seconds a unit of work waits for SQLite's writer lock
STORE_THREADS = 4  # threads that run whole units of work on an SQLite file (Store.run)
_IN_UNIT: ContextVar[bool] = ContextVar("broker_store_in_unit", default=False)
_P = ParamSpec("_P")
_T = TypeVar("_T")


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL; None for a PostgreSQL or in-memory database."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_private(database: Path) -> None:
    """The database holds the audit evidence and vault ciphertexts: owner-only (0600), and
    so are the ``-wal``/``-shm`` files SQLite creates next to it (it gives them the
    database file's mode)."""
    for suffix in SQLITE_FILES:
        path = database.with_name(database.name + suffix)
        with contextlib.suppress(OSError):  # absent, or not ours to change
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, 0o600)


def _create_private(database: Path) -> None:
    if database.parent.is_dir():
        with contextlib.suppress(OSError):
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # Take transactions into our own hands so that each one can begin IMMEDIATE: writers are
    # serialised up front instead of failing at commit, which keeps the audit chain linear.
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_reader_pragmas(busy_timeout: float = BUSY_TIMEOUT) -> Callable[[Any, Any], None]:
    """The connect listener of connections that only read and wait up to ``busy_timeout``
    seconds for a lock (0 on the event loop: never sleep there)."""
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA query_only=1")  # a write in a read unit fails, loudly
        cursor.close()
        dbapi_connection.isolation_level = None
    return pragmas


_BUSY = object()  # a read that would have waited for a lock
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _is_busy(error: BaseException | None) -> bool:
    code = getattr(getattr(error, "orig", None), "sqlite_errorcode", None)
    return isinstance(error, OperationalError) and isinstance(code, int) and (
        code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED))


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")  # a snapshot; WAL lets it run beside the writer


async def run_sync(session: AsyncSession, unit: Callable[Concatenate[Session, _P], _T],
                   *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """A unit written as a plain function (see :meth:`Store.run_write`), inside an async
    unit of work: ``session.run_sync``, typed for SQLModel's session, which it hands over."""
    return cast(_T, await session.run_sync(cast(Any, unit), *args, **kwargs))


def alembic_config() -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


class Store:
    """Owns the engine; hands out sessions; knows whether the schema is current."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        self._probe: AsyncEngine | None = None  # ping()'s own connections, never pooled
        self._turns: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._reader: AsyncEngine | None = None  # reading()'s, for an SQLite file
        # run()'s, for an SQLite file: plain pysqlite engines driven from the store's threads
        self._threads: ThreadPoolExecutor | None = None
        self._sync: dict[bool, Engine] = {}  # by write
        self._here: Engine | None = None  # reads on the calling thread (SQLite)
        self._database = sqlite_path(url) if self.is_sqlite else None
        if self.is_sqlite:
            if self._database is not None:
                _create_private(self._database)
            self._writer_events(self.engine.sync_engine)

    def _writer_events(self, engine: Engine) -> None:
        database = self._database
        if database is not None:
            event.listen(engine, "connect", lambda *_args: make_private(database))
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed on success, rolled back on error.

        The one place the ORM's errors become the broker's (:mod:`broker.errors`): a row that
        breaks a unique or foreign key (two writers at once) is :class:`DuplicateRow`,
        anything else the database or its driver raises is :class:`StoreError` naming the
        database, so an unreachable database reads as one clear line, never "internal error".
        """
        async with self._turn(), self._unit(self.engine) as session:
            yield session

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A unit of work that only reads (a login's key lookup, an access check): on an
        SQLite file it runs on connections of its own that cannot write, in a snapshot
        beside the writer, never queued behind writes. Elsewhere it is :meth:`session`."""
        reader = self._reader_engine()
        if reader is None:
            async with self.session() as session:
                yield session
            return
        async with self._unit(reader) as session:
            yield session

    async def run(self, unit: Callable[Concatenate[Session, _P], _T], *args: _P.args,
                  **kwargs: _P.kwargs) -> _T:
        """A read-only unit of work written as one plain function of an ORM session
        (see :meth:`run_write`). On an SQLite file it runs on the calling thread unless it
        would wait for a lock (see :meth:`_read_here`): keep such units to a few indexed
        lookups."""
        return await self._run(False, unit, *args, **kwargs)

    async def run_write(self, unit: Callable[Concatenate[Session, _P], _T], *args: _P.args,
                        **kwargs: _P.kwargs) -> _T:
        """A unit of work written as one plain function of an ORM session: committed when
        it returns, rolled back when it raises, errors mapped as :meth:`session` maps them.

        On an SQLite file the whole function runs in one of the store's threads, so the unit
        costs one hand-over between threads instead of four for each statement (aiosqlite's),
        which were most of what a login's short units cost. Elsewhere (PostgreSQL) it runs in
        an :class:`AsyncSession` through ``run_sync``. The units on every session's path
        (a login, the access check, the session's row) are written this way."""
        return await self._run(True, unit, *args, **kwargs)

    async def _run(self, write: bool, unit: Callable[..., _T], *args: Any, **kwargs: Any
                   ) -> _T:
        if self._database is None:
            async with (self.session() if write else self.reading()) as session:
                return await run_sync(session, unit, *args, **kwargs)
        if not write:
            read = self._read_here(unit, args, kwargs)
            if read is not _BUSY:
                return cast(_T, read)
            return await self._in_thread(self._sync_engine(False), unit, args, kwargs)
        async with self._turn():
            return await self._in_thread(self._sync_engine(True), unit, args, kwargs)

    def _read_here(self, unit: Callable[..., _T], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> _T | object:
        """A read unit on this thread (the event loop's), or :data:`_BUSY` when SQLite would
        have to wait for a lock. The read units are a few indexed lookups each, less CPU
        than handing them to a thread and back costs (the wake-ups, the GIL's hand-overs);
        a wait for a lock (a checkpoint, a WAL recovery) must not stall every session, so
        these connections never wait and such a read goes to the store's threads instead."""
        if self._here is None:
            self._here = create_engine(self._sync_url, poolclass=SingletonThreadPool,
                                       connect_args={"check_same_thread": False})
            event.listen(self._here, "connect", _sqlite_reader_pragmas(busy_timeout=0))
            event.listen(self._here, "begin", _sqlite_begin_deferred)
        try:
            return self._whole(self._here, unit, args, kwargs)
        except StoreError as exc:
            if _is_busy(exc.__cause__):
                return _BUSY
            raise

    async def _in_thread(self, engine: Engine, unit: Callable[..., _T],
                         args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
        """``unit`` in a thread, with this task's context (its log bindings). A unit once
        started runs to its end: a cancel waits for it (milliseconds), so that the write
        queue (:meth:`_turn`) is never handed on while SQLite's writer lock is still held."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
        context = contextvars.copy_context()
        done = asyncio.get_running_loop().run_in_executor(
            self._threads, context.run, self._whole, engine, unit, args, kwargs)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await done
            raise

    def _whole(self, engine: Engine, unit: Callable[..., _T], args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> _T:
        with self._mapped_errors(), Session(engine, expire_on_commit=False) as session:
            try:
                result = unit(session, *args, **kwargs)
                session.commit()
                return result
            except BaseException:
                with contextlib.suppress(SQLAlchemyError, OSError):
                    session.rollback()
                raise

    @property
    def _sync_url(self) -> URL:
        """The SQLite file's URL for the plain (not async) driver."""
        return make_url(self.url).set(drivername="sqlite")

    def _sync_engine(self, write: bool) -> Engine:
        engine = self._sync.get(write)
        if engine is None:
            engine = create_engine(self._sync_url, connect_args={"check_same_thread": False},
                                   pool_size=STORE_THREADS, max_overflow=0)
            if write:
                self._writer_events(engine)
            else:
                event.listen(engine, "connect", _sqlite_reader_pragmas())
                event.listen(engine, "begin", _sqlite_begin_deferred)
            self._sync[write] = engine
        return engine

    def _reader_engine(self) -> AsyncEngine | None:
        if self._reader is None and self._database is not None:
            self._reader = create_async_engine(self.url)
            event.listen(self._reader.sync_engine, "connect", _sqlite_reader_pragmas())
            event.listen(self._reader.sync_engine, "begin", _sqlite_begin_deferred)
        return self._reader

    @asynccontextmanager
    async def _unit(self, engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
        with self._mapped_errors():
            async with AsyncSession(engine, expire_on_commit=False) as session:
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    with contextlib.suppress(SQLAlchemyError, OSError):  # the link may be gone
                        await session.rollback()
                    raise

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise DuplicateRow(f"database {self.display_url}: {_first_line(exc)}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.display_url} failed: {_first_line(exc)}") from exc

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """SQLite: this process's units of work one at a time. Each begins IMMEDIATE (takes
        the writer lock); a second one on another pooled connection would wait in SQLite's
        busy handler, which polls in sleeps of up to 100 ms, so that under load (logins in
        parallel) most of an opening was spent asleep. Queued here, the next one starts the
        moment the last commits; other processes (a CLI, other workers) still meet the
        busy handler. A unit opened inside another (same task) does not queue behind it."""
        if not self.is_sqlite or _IN_UNIT.get():
            yield
            return
        loop = asyncio.get_running_loop()
        if self._turns is None or self._turns[0] is not loop:
            self._turns = (loop, asyncio.Lock())
        lock = self._turns[1]
        try:
            await within(BUSY_TIMEOUT, lock.acquire())
        except TimeoutError:
            raise StoreError(f"database {self.display_url} failed: busy for"
                             f" {BUSY_TIMEOUT:g} s") from None
        token = _IN_UNIT.set(True)
        try:
            yield
        finally:
            _IN_UNIT.reset(token)
            lock.release()

    async def close(self) -> None:
        if self._threads is not None:
            await asyncio.to_thread(self._threads.shutdown)
            self._threads = None
        for engine in self._sync.values():
            engine.dispose()
        self._sync.clear()
        if self._here is not None:
            self._here.dispose()
            self._here = None
        await self.engine.dispose()
        if self._reader is not None:
            await self._reader.dispose()
        if self._probe is not None:
            await self._probe.dispose()

    async def ping(self) -> None:
        """Whether the database answers, asked on a connection of its own: when every pooled
        connection is busy with sessions' checks (a thousand technicians logging in), the
        database is slow to hand out a connection, not away. Raises :class:`StoreError`."""
        if self._probe is None:
            self._probe = create_async_engine(self.url, poolclass=NullPool)
        try:
            async with self._probe.connect() as connection:
                await connection.exec_driver_sql(_REVISIONS)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot use database {self.display_url}: {_first_line(exc)}"
                             ) from exc

    async def migrate(self) -> None:
        """Bring the schema to the newest revision."""
        from alembic import command

        config = alembic_config()

        def upgrade(connection: Any) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with self._connect() as connection:
            await connection.run_sync(upgrade)
            await connection.commit()

    async def current_revision(self) -> str | None:
        """The revision the database's schema is at; None before its first migration."""
        async with self._connect() as connection:
            return await connection.run_sync(_schema_revision)

    async def check_migrated(self) -> None:
        head = head_revision()
        current = await self.current_revision()
        if current != head:
            state = "not initialised" if current is None else f"at revision {current}"
            raise StoreError(
                f"database {self.display_url} is {state}, expected {head}: "
                "run 'broker init' (new install) or 'broker migrate'"
            )

    def change_probe(self) -> SQLiteChangeProbe | None:
        """A cheap commit detector, for an SQLite database in a file; None otherwise."""
        return None if self._database is None else SQLiteChangeProbe(self._database)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def asyncpg_dsn(self) -> str:
        """The URL for a raw asyncpg connection (the change feed's LISTEN)."""
        return self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)

    @property
    def display_url(self) -> str:
        """The URL without a password, fit for messages and logs."""
        return self.engine.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as connection:
                yield connection
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreError(f"cannot use database {self.display_url}: {_first_line(exc)}") from exc


def head_revision() -> str:
    """The newest migration this broker ships."""
    return SCHEMA_HEAD


def _schema_revision(connection: Any) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    found = sorted(connection.exec_driver_sql(_REVISIONS).scalars())
    if len(found) > 1:
        raise StoreError(f"the database's schema has {len(found)} heads ({', '.join(found)}):"
                         " it was migrated by something else than 'broker migrate'")
    return found[0] if found else None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
