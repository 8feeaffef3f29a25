"""Signed checkpoints of the audit chain head: what makes the chain tamper-evident against a
database writer who does not hold the broker's Ed25519 signing key.

A checkpoint says "row ``seq`` of the chain had hash ``hash`` at time ``at``, seen by
``node``", signed with the recording key (``data/recording_ed25519.pem``: one evidence key,
whose public half auditors already pin with ``broker recordings pubkey``). Rewriting any row
up to a checkpoint changes that row's hash, so the checkpoint no longer matches; deleting the
newest rows leaves a checkpoint naming a row that is gone.

Who writes them:

* ``broker serve`` (:class:`Checkpointer`): a ``start`` checkpoint, then ``periodic`` ones
  each second in which the head moved (by any process or node) and at least every
  ``HEARTBEAT``, and a ``shutdown`` one when it stops. A node's server checkpoints form a
  chain of their own (``prev`` = the digest of the node's previous one), so deleting some of
  them is seen; a ``start`` after anything but a ``shutdown`` records ``audit.unclean_stop``.
* A CLI process that wrote audit events writes one ``cli`` checkpoint as it exits
  (:func:`checkpoint_if_written`), so the CLI alone (no server running) leaves no gap.

Each checkpoint is also logged as an ``audit.checkpoint`` JSON line (with its signature): the
log stream shipped to a SIEM holds copies the attacker cannot delete, and
``broker audit verify --checkpoints FILE`` checks the database against them. The checks
themselves are in :mod:`broker.audit.checks`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.chain import (
    _ADVISORY_LOCK_ID,
    GENESIS,
    committed_count,
    record,
)
from broker.store.models import AuditCheckpoint, AuditEvent

if TYPE_CHECKING:
    from broker.recording.manifest import Signer
    from broker.services.context import Context

INTERVAL = timedelta(seconds=1)
HEARTBEAT = timedelta(seconds=60)
GRACE = timedelta(seconds=5)  # rows younger than this may not be checkpointed yet
STALE = HEARTBEAT + timedelta(seconds=10)  # a running node has signed something since
SERVER_KINDS = frozenset({"start", "periodic", "shutdown"})
LEGACY = "legacy"
LOG_EVENT = "audit.checkpoint"
_log = structlog.get_logger("broker.audit")


def body(cp: AuditCheckpoint) -> bytes:
    """The exact bytes a checkpoint's signature covers."""
    data = {"v": 1, "node": cp.node, "kind": cp.kind, "seq": cp.seq, "hash": cp.hash,
            "at": cp.at.isoformat(), "prev": cp.prev}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def signature_ok(cp: AuditCheckpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(cp.signature, validate=True), body(cp))
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return cp.digest == hashlib.sha256(body(cp)).hexdigest()


def log_line(cp: AuditCheckpoint) -> dict[str, Any]:
    return {"checkpoint": cp.id, "node": cp.node, "kind": cp.kind, "seq": cp.seq,
            "hash": cp.hash, "at": cp.at.isoformat(), "prev": cp.prev, "digest": cp.digest,
            "signature": cp.signature}


async def _head(db: AsyncSession) -> tuple[int, str]:
    row = (await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(1))
           ).first()
    return (row.seq, row.hash) if row else (0, GENESIS)


_adopted = [False]  # this process has seen a signed checkpoint: no legacy to adopt


async def _adopt_legacy(db: AsyncSession, now: datetime, node: str) -> None:
    """The first signed checkpoint after migration 0011: say, in the chain itself, which rows
    were only hash-chained before signing began."""
    if _adopted[0]:
        return

    async def first(*where: Any) -> AuditCheckpoint | None:
        return (await db.exec(select(AuditCheckpoint).where(*where).limit(1))).first()

    if await first(AuditCheckpoint.kind != LEGACY) is not None:
        _adopted[0] = True
        return
    if await first(AuditCheckpoint.kind == LEGACY) is None:
        return  # a new install: nothing predates signing
    if db.get_bind().dialect.name == "postgresql":  # one node adopts it, the others wait
        await db.exec(text(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_ID})"))  # type: ignore[call-overload]
        if await first(AuditCheckpoint.kind != LEGACY) is not None:
            return
    legacy = await first(AuditCheckpoint.kind == LEGACY)
    assert legacy is not None
    await record(db, now, "audit.signing_started", "broker", None, node=node,
                 unsigned_through=legacy.seq, unsigned_head=legacy.hash,
                 note=f"audit rows 1-{legacy.seq} were written before signed checkpoints "
                      "and are protected by the hash chain only")


async def write_checkpoint(ctx: Context, signer: Signer, kind: str,
                           prev: str | None = None) -> AuditCheckpoint:
    """Sign the current chain head and store the checkpoint; log it once committed."""
    now = ctx.now().astimezone(UTC)  # signed as stored: UTC, so it reads back the same
    async with ctx.store.session() as db:
        await _adopt_legacy(db, now, ctx.node)
        seq, head = await _head(db)
        cp = AuditCheckpoint(node=ctx.node, kind=kind, seq=seq, hash=head, at=now, prev=prev,
                             digest="", signature="")
        data = body(cp)
        cp.digest = hashlib.sha256(data).hexdigest()
        cp.signature = base64.b64encode(signer.sign(data)).decode("ascii")
        db.add(cp)
        await db.flush()
    _log.info(LOG_EVENT, **log_line(cp))
    return cp


async def sign_head(ctx: Context, kind: str = "cli") -> AuditCheckpoint:
    """Sign the chain head now with the configured key (raises ConfigError without it)."""
    from broker.recording.manifest import signer_for

    return await write_checkpoint(ctx, signer_for(ctx.config), kind)


# -- CLI processes ------------------------------------------------------------------------

_signed_through = [0]  # committed_count() when this process last checkpointed


async def checkpoint_if_written(ctx: Context) -> None:
    """At the end of a CLI command: sign the head if this process wrote audit events."""
    if committed_count() == _signed_through[0]:
        return
    from broker.recording.manifest import signer_for

    _signed_through[0] = committed_count()
    try:
        signer = signer_for(ctx.config)
    except Exception as exc:  # a missing key must not fail the command
        _log.warning("audit.checkpoint_skipped", reason=str(exc))
        return
    try:
        await write_checkpoint(ctx, signer, "cli")
    except Exception as exc:  # the command's own outcome comes first
        _log.warning("audit.checkpoint_failed", reason=str(exc))


# -- broker serve -------------------------------------------------------------------------

class Checkpointer:
    """Signs the chain head each second it moved, every ``heartbeat`` regardless, and at
    start and shutdown, as one chain of checkpoints per node."""

    def __init__(self, ctx: Context, signer: Signer, interval: timedelta = INTERVAL,
                 heartbeat: timedelta = HEARTBEAT) -> None:
        self.ctx, self.signer = ctx, signer
        self.interval, self.heartbeat = interval, heartbeat
        self.last: AuditCheckpoint | None = None

    async def start(self) -> AuditCheckpoint:
        async with self.ctx.store.session() as db:
            before = (await db.exec(
                select(AuditCheckpoint).where(AuditCheckpoint.node == self.ctx.node,
                                              col(AuditCheckpoint.kind).in_(SERVER_KINDS))
                .order_by(col(AuditCheckpoint.id).desc()).limit(1))).first()
            if before is not None and before.kind != "shutdown":
                await record(db, self.ctx.now(), "audit.unclean_stop", "broker", None,
                             node=self.ctx.node, last_checkpoint_at=before.at.isoformat(),
                             last_checkpoint_seq=before.seq,
                             note="the node's last checkpoint is not a clean shutdown: it "
                                  "crashed, or newer rows and checkpoints were deleted")
        return await self._write("start", before.digest if before else None)

    async def _write(self, kind: str, prev: str | None) -> AuditCheckpoint:
        self.last = await write_checkpoint(self.ctx, self.signer, kind, prev)
        return self.last

    async def tick(self) -> AuditCheckpoint | None:
        """One second's work: a checkpoint if the head moved or the heartbeat is due."""
        assert self.last is not None, "start() first"
        async with self.ctx.store.reading() as db:  # a write only when the head moved
            seq, head = await _head(db)
        due = self.ctx.now() - self.last.at >= self.heartbeat
        if (seq, head) == (self.last.seq, self.last.hash) and not due:
            return None
        return await self._write("periodic", self.last.digest)

    async def run(self) -> None:
        while True:
            await self.ctx.clock.sleep_until(self.ctx.now() + self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("audit.checkpoint_failed")

    async def stop(self) -> None:
        if self.last is not None:
            with contextlib.suppress(Exception):
                await self._write("shutdown", self.last.digest)


async def load(db: AsyncSession) -> list[AuditCheckpoint]:
    return list((await db.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.id)))
                 ).all())
