"""The SIEM forwarder: a ``broker serve`` task that sends the audit chain, in order, from a
persisted cursor.

Each round the node **claims** the stream (``siem_cursor.claimed_by/claimed_until``: a lease
in the database, renewed every round, like rotation claims), reads the audit rows with
``seq > cursor`` in order, sends them as one batch of RFC 5424 messages, and only after the
write is drained moves the cursor to the batch's last seq — in an update that also checks it
still holds the claim and that the cursor is where it read it (compare-and-set). In a cluster
exactly one node forwards; when it stops it releases the claim, and when it dies the lease
runs out and another node carries on from the cursor.

A round starts at once when the server's change feed reports new audit events
(:meth:`Forwarder.wake`), and at the latest every poll interval otherwise.

When the SIEM is unreachable (refused, timed out, TLS failure, connection closed) the round
fails, the error is kept in ``siem_cursor.last_error``, and the next attempt waits an
exponential backoff (``[siem] retry_base`` doubling up to ``retry_max``). The cursor has not
moved, so after the outage — or after the broker restarted — the forwarder catches up from it:
nothing is lost, and nothing is sent twice for one cursor position.

Honest limits: the move of the cursor is a database commit after the network write, so a
crash (or a lost claim) between the two sends that last batch again; syslog over TCP/TLS has
no acknowledgement, so a drained write is one the kernel accepted, and a receiver that dies
at that very moment without closing its side can lose that batch. Every message carries the
audit ``seq`` (and ``hash``/``prev_hash``), so a receiver deduplicates on seq and detects any
gap against the signed chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from sqlmodel import col, func, or_, select, update

from broker.aio import within
from broker.domain.durations import parse_duration
from broker.errors import ConfigError, DuplicateRow
from broker.services.context import Context
from broker.siem.syslog import Connection, SendError, Target, frame, message, tls_context
from broker.store.models import AuditEvent, SiemCursor

log = structlog.get_logger("broker.siem")
CURSOR = "siem"
POLL_SECONDS = 1.0
BATCH = 200
MIN_LEASE = timedelta(seconds=30)


def _product_version() -> str:
    try:
        return version("broker")
    except PackageNotFoundError:
        return ""


def build_tls(ctx: Context) -> ssl.SSLContext:
    """The TLS context for a tls:// target; a file that cannot be used is one ConfigError
    line naming its ``[siem]`` key."""
    settings = ctx.config.settings.siem

    def path(value: str) -> str | None:
        return str(ctx.config.path(value)) if value else None

    def problem(key: str, exc: BaseException) -> ConfigError:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        return ConfigError(f"[siem] {key} = {getattr(settings, key)!r}: cannot use it: {reason}")

    try:
        context = tls_context(path(settings.ca_file), None, None)
    except (OSError, ssl.SSLError) as exc:
        raise problem("ca_file", exc) from None
    if settings.cert_file:
        for key in ("cert_file", "key_file"):
            file = ctx.config.path(getattr(settings, key))
            if not file.is_file():
                raise problem(key, FileNotFoundError(2, "no such file"))
        try:
            context.load_cert_chain(path(settings.cert_file) or "", path(settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise problem("cert_file", exc) from None
    return context


class Forwarder:
    def __init__(self, ctx: Context, *, poll: float = POLL_SECONDS, batch: int = BATCH,
                 lease: timedelta | None = None) -> None:
        settings = ctx.config.settings.siem
        if not settings.syslog_url:
            raise ConfigError("[siem] syslog_url: empty (the SIEM stream is off)")
        self.ctx, self.poll, self.batch = ctx, poll, batch
        self.format, self.facility = settings.format, settings.facility_code
        self.app_name = settings.app_name
        self.target = Target.parse(settings.syslog_url)
        timeout = parse_duration(settings.timeout).total_seconds()
        self.retry_base = parse_duration(settings.retry_base).total_seconds()
        self.retry_max = parse_duration(settings.retry_max).total_seconds()
        # Longer than a whole send (connect + write), so a working holder never loses it.
        self.lease = lease or max(MIN_LEASE, timedelta(seconds=3 * timeout))
        tls = build_tls(ctx) if self.target.scheme == "tls" else None
        self.connection = Connection(self.target, tls, timeout)
        self.failures = 0
        self.product_version = _product_version()
        self._wake = asyncio.Event()

    @classmethod
    def from_config(cls, ctx: Context) -> Forwarder | None:
        """The forwarder ``[siem]`` asks for, or None when the stream is off."""
        return cls(ctx) if ctx.config.settings.siem.syslog_url else None

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: forward what is new, then wait a poll (or a backoff after a
        failure)."""
        log.info("siem stream on", target=str(self.target), format=self.format)
        try:
            while True:
                delay = self.poll
                try:
                    await self.forward()
                    if self.failures:
                        log.info("siem stream resumed", target=str(self.target),
                                 after_failures=self.failures)
                    self.failures = 0
                except SendError as exc:
                    self.failures += 1
                    delay = self.backoff(self.failures)
                    log.warning("siem send failed", error=str(exc), attempt=self.failures,
                                retry_in=delay)
                    with contextlib.suppress(Exception):
                        await self._record_error(str(exc))
                except Exception as exc:  # a database blip: keep forwarding
                    log.error("siem round failed", error=str(exc))
                if self.failures:
                    await asyncio.sleep(delay)  # a new event does not shorten a backoff
                else:
                    with contextlib.suppress(TimeoutError):
                        await within(delay, self._wake.wait())
                self._wake.clear()
        finally:
            await self.connection.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())

    def wake(self) -> None:
        """New audit events were committed (the server's change feed): forward now rather
        than at the next poll."""
        self._wake.set()

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` failed rounds: retry_base doubling, up to retry_max."""
        return float(min(self.retry_max, self.retry_base * 2.0 ** min(failures - 1, 30)))

    async def forward(self) -> int:
        """Send every event after the cursor, batch by batch, while this node holds the claim;
        returns how many were sent. Raises :class:`SendError` when the SIEM is unreachable."""
        sent = 0
        while True:
            cursor = await self.claim()
            if cursor is None:  # another node forwards
                await self.connection.close()
                return sent
            async with self.ctx.store.session() as db:
                rows = list((await db.exec(
                    select(AuditEvent).where(AuditEvent.seq > cursor)
                    .order_by(col(AuditEvent.seq)).limit(self.batch))).all())
            if not rows:
                return sent
            frames = [frame(message(row, fmt=self.format, facility=self.facility,
                                    app_name=self.app_name, hostname=self.ctx.node,
                                    product_version=self.product_version)) for row in rows]
            await self.connection.send(frames)
            if not await self._advance(cursor, rows[-1].seq):
                log.warning("siem claim lost mid-batch", seq=rows[-1].seq)
                return sent
            sent += len(rows)
            if len(rows) < self.batch:
                return sent

    # -- the cursor and the claim ---------------------------------------------------------------
    async def claim(self) -> int | None:
        """Take or renew this node's lease on the stream; the cursor's seq if held."""
        await ensure_cursor(self.ctx)
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            result = await db.exec(
                update(SiemCursor).where(
                    col(SiemCursor.name) == CURSOR,
                    or_(col(SiemCursor.claimed_until).is_(None),
                        col(SiemCursor.claimed_until) <= now,
                        col(SiemCursor.claimed_by) == self.ctx.node))
                .values(claimed_by=self.ctx.node, claimed_until=now + self.lease)
                .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                return None
            row = await db.get(SiemCursor, CURSOR)
            return row.seq if row is not None else None

    async def _advance(self, old: int, new: int) -> bool:
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            result = await db.exec(
                update(SiemCursor).where(col(SiemCursor.name) == CURSOR,
                                         col(SiemCursor.claimed_by) == self.ctx.node,
                                         col(SiemCursor.seq) == old)
                .values(seq=new, last_sent_at=now, last_error=None, last_error_at=None,
                        claimed_until=now + self.lease)
                .execution_options(synchronize_session=False))
            return bool(result.rowcount == 1)

    async def _record_error(self, error: str) -> None:
        async with self.ctx.store.session() as db:
            await db.exec(update(SiemCursor).where(col(SiemCursor.name) == CURSOR,
                                                   col(SiemCursor.claimed_by) == self.ctx.node)
                          .values(last_error=error[:500], last_error_at=self.ctx.now())
                          .execution_options(synchronize_session=False))

    async def release(self) -> None:
        """Give up the claim (on shutdown) so another node can carry on at once."""
        async with self.ctx.store.session() as db:
            await db.exec(update(SiemCursor).where(col(SiemCursor.name) == CURSOR,
                                                   col(SiemCursor.claimed_by) == self.ctx.node)
                          .values(claimed_by=None, claimed_until=None)
                          .execution_options(synchronize_session=False))


async def ensure_cursor(ctx: Context) -> None:
    """The cursor row, created at seq 0 (the whole chain is owed) if missing."""
    async with ctx.store.session() as db:
        if await db.get(SiemCursor, CURSOR) is not None:
            return
    with contextlib.suppress(DuplicateRow):  # another node made it first
        async with ctx.store.session() as db:
            db.add(SiemCursor(name=CURSOR, seq=0))


# -- status -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiemStatus:
    enabled: bool
    target: str | None
    format: str
    cursor: int  # every event with seq <= cursor was sent
    head: int  # the newest audit seq
    lag: int  # head - cursor: events not yet sent
    forwarding_node: str | None  # the node holding an unexpired claim
    claimed_until: datetime | None
    last_sent_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def head_and_cursor(ctx: Context) -> tuple[int, SiemCursor | None]:
    async with ctx.store.session() as db:
        head = (await db.exec(select(func.max(col(AuditEvent.seq))))).one() or 0
        cursor = await db.get(SiemCursor, CURSOR)
    return int(head), cursor


async def lag(ctx: Context) -> int:
    """How many audit events the SIEM has not been sent yet (head seq - cursor); for metrics."""
    head, cursor = await head_and_cursor(ctx)
    return max(0, head - (cursor.seq if cursor else 0))


async def status(ctx: Context) -> SiemStatus:
    settings = ctx.config.settings.siem
    head, cursor = await head_and_cursor(ctx)
    seq = cursor.seq if cursor else 0
    now = ctx.now()
    held = (cursor is not None and cursor.claimed_until is not None
            and cursor.claimed_until > now)
    return SiemStatus(
        enabled=bool(settings.syslog_url),
        target=str(Target.parse(settings.syslog_url)) if settings.syslog_url else None,
        format=settings.format, cursor=seq, head=head, lag=max(0, head - seq),
        forwarding_node=cursor.claimed_by if held and cursor else None,
        claimed_until=cursor.claimed_until if held and cursor else None,
        last_sent_at=cursor.last_sent_at if cursor else None,
        last_error=cursor.last_error if cursor else None,
        last_error_at=cursor.last_error_at if cursor else None)
