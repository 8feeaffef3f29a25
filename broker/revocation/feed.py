"""The change feed: how a node learns that something changed on another node (or in a CLI
process) that its live sessions must re-check.

Every change that matters is an audit event, so the feed follows the audit chain:

* :class:`PollingFeed` reads the chain's head whenever SQLite's ``data_version`` shows a
  commit, checked every quarter second (SQLite: one machine).
* :class:`PostgresFeed` LISTENs on a channel that :func:`broker.audit.chain.record` NOTIFYs
  in the same transaction, so other nodes hear of a commit within milliseconds. Its listener
  reconnects with backoff after losing the database, and then asks for a full re-sync,
  since notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from sqlmodel import Session, col, func, select

from broker import metrics
from broker.aio import within
from broker.audit.chain import NOTIFY_CHANNEL as CHANNEL
from broker.services.context import Context
from broker.store.models import AuditEvent
from broker.store.probe import SQLiteChangeProbe

POLL_INTERVAL = 0.25
KEEPALIVE = 5.0  # seconds between checks that the LISTEN connection is alive
RECONNECT_MAX = 5.0
log = structlog.get_logger("broker.feed")

OnChange = Callable[[list[str]], Awaitable[None]]  # kinds of the new events
OnResync = Callable[[], Awaitable[None]]


class ChangeFeed(Protocol):
    async def run(self, on_change: OnChange, on_resync: OnResync) -> None:
        """Call ``on_change`` with the kinds of new events until cancelled; call
        ``on_resync`` whenever events may have been missed."""


def feed_for(ctx: Context) -> ChangeFeed:
    return PostgresFeed(ctx) if ctx.store.dialect == "postgresql" else PollingFeed(ctx)


class PollingFeed:
    def __init__(self, ctx: Context, interval: float = POLL_INTERVAL) -> None:
        self.ctx, self.interval = ctx, interval

    async def run(self, on_change: OnChange, on_resync: OnResync) -> None:
        probe = self.ctx.store.change_probe()
        try:
            await self._poll(probe, on_change)
        finally:
            if probe is not None:
                probe.close()

    async def _poll(self, probe: SQLiteChangeProbe | None, on_change: OnChange) -> None:
        if probe is not None:
            probe.changed()  # the baseline, before the head: a commit in between is a change
        last, _ = await self._read(None)
        unread = False  # the probe saw a commit that a failed read has not caught up with
        while True:
            await asyncio.sleep(self.interval)
            if probe is not None and not probe.changed() and not unread:
                continue
            unread = True
            try:
                head, rows = await self._read(last)
                if head == last:
                    unread = False
                    continue
                last, unread = head, False
                if rows:
                    seen_lag(max(ts for _kind, ts in rows))
                await on_change([kind for kind, _ts in rows])
            except Exception as exc:
                log.error("change feed failed", error=str(exc))

    async def _read(self, last: int | None) -> tuple[int, list[tuple[str, datetime]]]:
        return await self.ctx.store.run(_events_after, last)


def _events_after(db: Session, last: int | None) -> tuple[int, list[tuple[str, datetime]]]:
    """The chain's head, and the kind and time of each event after ``last`` up to it (none
    when ``last`` is None): one read, beside the logins' writes, never queued behind them."""
    head = db.exec(select(func.max(col(AuditEvent.seq)))).one() or 0
    if last is None or head == last:
        return head, []
    return head, [(kind, ts) for kind, ts in db.exec(
        select(AuditEvent.kind, AuditEvent.ts).where(AuditEvent.seq > last,
                                                     AuditEvent.seq <= head))]


class PostgresFeed:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.connected = asyncio.Event()  # for tests and health: the listener is up
        self.up_once = False  # connected since the last failure: reset the backoff

    async def run(self, on_change: OnChange, on_resync: OnResync) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen(on_change, on_resync)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("change feed lost the database; reconnecting",
                          error=(str(exc).splitlines() or [type(exc).__name__])[0])
            if self.up_once:
                delay = 0.1
                self.up_once = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _listen(self, on_change: OnChange, on_resync: OnResync) -> None:
        import asyncpg

        queue: asyncio.Queue[str | None] = asyncio.Queue()  # None: the connection is lost
        conn: Any = await asyncpg.connect(
            self.ctx.store.asyncpg_dsn, timeout=5,
            server_settings={"application_name": f"broker-feed:{self.ctx.node}"[:63]})
        try:
            conn.add_termination_listener(lambda _conn: queue.put_nowait(None))
            await conn.add_listener(CHANNEL, lambda *args: queue.put_nowait(args[3]))
            self.connected.set()
            self.up_once = True
            # Whatever happened before LISTEN took effect (start-up, an outage) is caught
            # up by re-checking everything once.
            await on_resync()
            await self._pump(conn, queue, on_change)
        finally:
            self.connected.clear()
            conn.terminate()

    async def _pump(self, conn: Any, queue: asyncio.Queue[str | None],
                    on_change: OnChange) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                # that arrives as the queue yields (our own NOTIFYs at shutdown), and the
                # feed would never stop.
                async with asyncio.timeout(KEEPALIVE):
                    payload = await queue.get()
            except TimeoutError:
                await within(KEEPALIVE, conn.fetchval("SELECT 1"))
                continue
            seen_at = datetime.now(UTC)
            batch = [payload]
            while not queue.empty():
                batch.append(queue.get_nowait())
            kinds = [item.partition(" ")[2] for item in batch if item is not None]
            if kinds:
                try:
                    await on_change(kinds)
                except Exception as exc:
                    log.error("change handler failed", error=str(exc))
            # measured after the handler, so that revocation never waits for it
            newest = max((item.partition(" ")[0] for item in batch if item is not None),
                         key=lambda seq: int(seq) if seq.isdigit() else -1, default="")
            if newest.isdigit():
                await self._measure_lag(int(newest), seen_at)
            if None in batch:
                raise ConnectionError("the LISTEN connection was closed")

    async def _measure_lag(self, seq: int, seen_at: datetime) -> None:
        """The newest notified event's timestamp, read back (one primary-key lookup per
        batch), against when this node heard of it."""
        try:
            async with self.ctx.store.reading() as db:
                ts = (await db.exec(select(AuditEvent.ts).where(AuditEvent.seq == seq))).first()
        except Exception as exc:
            log.warning("change feed lag not measured", error=str(exc))
            return
        if ts is not None:
            seen_lag(ts, seen_at)


def seen_lag(ts: datetime, seen_at: datetime | None = None) -> None:
    """Set the change-feed lag gauge: from an audit row's timestamp to when this node saw
    it (now, by default), on this node's clock."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    seen_at = seen_at or datetime.now(UTC)
    metrics.FEED_LAG.set(max(0.0, (seen_at - ts).total_seconds()))
