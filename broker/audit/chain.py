"""The audit log: a SHA-256 hash chain of events, appended in the caller's transaction.

Row ``n`` stores ``hash = sha256(prev_hash || canonical(n, ts, kind, actor, subject, data))``
with ``prev_hash`` = row ``n-1``'s hash. ``prev_hash`` is unique, so the chain cannot fork even
when several nodes append at once; appends are serialised (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL advisory lock). Changing, inserting or deleting a row breaks a link that
:func:`verify_rows` names; someone who rewrites the rows after it and recomputes every hash
is caught by the signed checkpoints of the head (:mod:`broker.audit.checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import event, insert, text
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.store.engine import run_sync
from broker.store.models import AuditEvent

GENESIS = "0" * 64
_ADVISORY_LOCK_ID = 0x62726F6B  # "brok"
_PENDING = "audit_lines"
NOTIFY_CHANNEL = "broker_changes"
_log = structlog.get_logger("broker.audit")


def canonical(seq: int, ts: datetime, kind: str, actor: str, subject: str | None,
              data: dict[str, Any]) -> str:
    body = {"seq": seq, "ts": ts.isoformat(), "kind": kind, "actor": actor,
            "subject": subject, "data": data}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def link_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


async def lock_chain(session: AsyncSession) -> None:
    """Take, for the rest of ``session``'s transaction, the lock that orders appends to the
    chain (PostgreSQL; SQLite's BEGIN IMMEDIATE already orders every writer). Taken before
    reading what a transaction is about to change and audit (a grant falling due, say), it
    makes two nodes or workers doing the same bookkeeping run one after the other: the
    second reads what the first committed, and nothing is done or audited twice."""
    await run_sync(session, _lock_chain)


_LOCK = text(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_ID})")


def _lock_chain(session: Session) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_LOCK)


async def record(session: AsyncSession, now: datetime, kind: str, actor: str,
                 subject: str | None = None, **data: Any) -> None:
    """Append one event to the chain inside ``session``'s transaction."""
    await run_sync(session, append, now, kind, actor, subject, **data)


# Built once: an append is on every login and every session's start and end, and building
# and keying the statements cost more than running them.
_HEAD = select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
_INSERT = insert(AuditEvent)
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def append(session: Session, /, now: datetime, kind: str, actor: str,
           subject: str | None = None, **data: Any) -> None:
    """:func:`record` for a unit of work written as a plain function
    (:meth:`broker.store.engine.Store.run_write`): the one implementation of both. The row
    is written on the session's connection as it is (one statement to read the head, one to
    insert), not as an ORM object: nothing of the unit reads it back as one."""
    _lock_chain(session)
    connection = session.connection()
    head = connection.execute(_HEAD).first()
    seq, prev = (head[0] + 1, head[1]) if head is not None else (1, GENESIS)
    payload = json.loads(json.dumps(data, default=str))
    row_hash = link_hash(prev, canonical(seq, now, kind, actor, subject, payload))
    connection.execute(_INSERT, {"seq": seq, "ts": now, "kind": kind, "actor": actor,
                                 "subject": subject, "data": json.dumps(payload, sort_keys=True),
                                 "prev_hash": prev, "hash": row_hash})
    if connection.dialect.name == "postgresql":
        # delivered at commit, to every node LISTENing (broker.revocation.feed)
        connection.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "payload": f"{seq} {kind}"})
    session.info.setdefault(_PENDING, []).append(
        {"seq": seq, "kind": kind, "actor": actor, "subject": subject, "hash": row_hash,
         **payload}
    )


_committed = [0]  # audit events this process has committed
_counting = threading.Lock()  # units also commit in the store's threads


def committed_count() -> int:
    """How many audit events this process has committed (``checkpoint_if_written``)."""
    return _committed[0]


@event.listens_for(OrmSession, "after_commit")
def _log_committed(session: OrmSession) -> None:
    for line in session.info.pop(_PENDING, []):
        with _counting:
            _committed[0] += 1
        _log.info("audit", **line)


@event.listens_for(OrmSession, "after_rollback")
def _drop_rolled_back(session: OrmSession) -> None:
    session.info.pop(_PENDING, None)


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    message: str

    def __str__(self) -> str:
        return f"audit row {self.seq}: {self.message}"


def verify_rows(rows: Iterable[AuditEvent]) -> tuple[int, list[ChainProblem]]:
    """Check every link; return the number of rows seen and each problem found."""
    problems: list[ChainProblem] = []
    expected_seq, expected_prev, count = 1, GENESIS, 0
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            missing = (f"row {expected_seq} is missing" if row.seq == expected_seq + 1
                       else f"rows {expected_seq}-{row.seq - 1} are missing")
            problems.append(ChainProblem(row.seq, f"{missing} (deleted)"))
        elif row.prev_hash != expected_prev:
            problems.append(ChainProblem(
                row.seq, "does not link to the row before it (a row was inserted or replaced)"))
        body = canonical(row.seq, row.ts, row.kind, row.actor, row.subject, json.loads(row.data))
        if link_hash(row.prev_hash, body) != row.hash:
            problems.append(ChainProblem(row.seq, f"was changed after it was written ({row.kind})"))
        expected_seq, expected_prev = row.seq + 1, row.hash
    return count, problems


async def iter_events(session: AsyncSession, since: datetime | None = None,
                      batch: int = 1000) -> AsyncIterator[AuditEvent]:
    last = 0
    while True:
        query = select(AuditEvent).where(AuditEvent.seq > last)
        if since is not None:
            query = query.where(AuditEvent.ts >= since)
        rows = (await session.exec(query.order_by(col(AuditEvent.seq)).limit(batch))).all()
        if not rows:
            return
        for row in rows:
            yield row
        last = rows[-1].seq
