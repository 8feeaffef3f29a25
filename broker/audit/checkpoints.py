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
``broker audit verify --checkpoints FILE`` checks the database against them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
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
    ChainProblem,
    committed_count,
    iter_events,
    record,
    verify_rows,
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
    """The first signed checkpoint after migration 0010: say, in the chain itself, which rows
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
        async with self.ctx.store.session() as db:
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


# -- verification -------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    message: str
    note: bool = False  # worth reading, not a failure

    def __str__(self) -> str:
        return f"note: {self.message}" if self.note else self.message


def _where(cp: AuditCheckpoint) -> str:
    return f"checkpoint {cp.id or '?'} ({cp.kind}, {cp.node}, {cp.at.isoformat()})"


def _against_rows(cp: AuditCheckpoint, hashes: dict[int, str], newest: int) -> str | None:
    if cp.seq == 0:
        return None if cp.hash == GENESIS else f"{_where(cp)} names row 0 with a wrong hash"
    have = hashes.get(cp.seq)
    if have is None and cp.seq > newest:
        gone = (f"row {cp.seq} was" if cp.seq == newest + 1
                else f"rows {newest + 1}-{cp.seq} were")
        return (f"{_where(cp)} signed row {cp.seq}, but the newest row is {newest}: "
                f"{gone} deleted")
    if have is None:
        return f"{_where(cp)} signed row {cp.seq}, which is missing: rows were deleted"
    if have != cp.hash:
        return (f"{_where(cp)} signed row {cp.seq} with hash {cp.hash[:16]}, the database row "
                f"{cp.seq} has {have[:16]}: rows up to {cp.seq} were changed, inserted or "
                "deleted")
    return None


def verify_checkpoints(rows: list[AuditEvent], checkpoints: list[AuditCheckpoint],
                       public_key: Ed25519PublicKey, now: datetime,
                       grace: timedelta = GRACE, stale: timedelta = STALE) -> list[Finding]:
    """What the signed checkpoints say about the rows (``rows`` in chain order)."""
    found: list[Finding] = []
    hashes = {r.seq: r.hash for r in rows}
    newest = rows[-1].seq if rows else 0
    covered, legacy_seen = 0, False
    good: list[AuditCheckpoint] = []
    for cp in sorted(checkpoints, key=lambda c: c.id or 0):
        if cp.kind == LEGACY and not cp.signature:
            if legacy_seen or good:
                found.append(Finding(f"{_where(cp)}: an unsigned checkpoint after signed ones"
                                     " (inserted by someone without the key)"))
                continue
            legacy_seen = True
            found.append(Finding(f"audit rows 1-{cp.seq} predate signed checkpoints (database "
                                 f"upgraded at {cp.at.isoformat()}): only the hash chain "
                                 "protects them", note=True))
            problem = _against_rows(cp, hashes, newest)
            if problem:
                found.append(Finding(problem))
            else:
                covered = cp.seq
            continue
        if not signature_ok(cp, public_key):
            found.append(Finding(f"{_where(cp)}: the signature does not verify "
                                 "(forged or altered checkpoint)"))
            continue
        good.append(cp)
        problem = _against_rows(cp, hashes, newest)
        if problem:
            found.append(Finding(problem))
        else:
            covered = max(covered, cp.seq)
    found += _node_chains(good, now, stale)
    found += _uncovered(rows, covered, now, grace)
    return found


def _node_chains(good: list[AuditCheckpoint], now: datetime,
                 stale: timedelta) -> list[Finding]:
    found: list[Finding] = []
    by_node: dict[str, list[AuditCheckpoint]] = {}
    for cp in good:
        if cp.kind in SERVER_KINDS:
            by_node.setdefault(cp.node, []).append(cp)
    for node, chain in sorted(by_node.items()):
        digests = {cp.digest: cp for cp in chain}
        linked: set[str] = set()
        for cp in chain:
            if cp.prev is None:
                continue
            if cp.prev not in digests:
                found.append(Finding(f"{_where(cp)} follows a checkpoint of {node} that is "
                                     "gone: checkpoints were deleted"))
            elif cp.prev in linked:
                found.append(Finding(f"{_where(cp)}: a second checkpoint after the same one "
                                     f"(the checkpoints of {node} fork)"))
            else:
                if cp.kind == "start" and digests[cp.prev].kind != "shutdown":
                    found.append(Finding(
                        f"{node} stopped without a clean shutdown after "
                        f"{digests[cp.prev].at.isoformat()} and restarted at "
                        f"{cp.at.isoformat()} (a crash, or the rows and checkpoints written "
                        "in between were deleted: compare with the log copy)", note=True))
            linked.add(cp.prev or "")
        last = chain[-1]
        if last.kind != "shutdown" and now - last.at > stale:
            found.append(Finding(
                f"the newest checkpoint of {node} is from {last.at.isoformat()} and is not a "
                "clean shutdown: the node is down after a crash, or newer rows and "
                "checkpoints were deleted"))
    return found


def _uncovered(rows: list[AuditEvent], covered: int, now: datetime,
               grace: timedelta) -> list[Finding]:
    found: list[Finding] = []
    late = [r for r in rows if r.seq > covered]
    old = [r for r in late if r.ts <= now - grace]
    if old:
        found.append(Finding(
            f"audit rows {old[0].seq}-{old[-1].seq} (from {old[0].ts.isoformat()}) are not "
            "covered by any signed checkpoint: written or rewritten by someone without the key"))
    future = [r for r in late if r.ts > now + grace]
    if future:
        found.append(Finding(f"audit rows from {future[0].seq} are dated in the future "
                             f"({future[0].ts.isoformat()}) and not covered by a checkpoint"))
    return found


def parse_log_copy(lines: Iterable[str], where: str) -> tuple[list[AuditCheckpoint],
                                                                 list[Finding]]:
    """The ``audit.checkpoint`` lines of an exported log stream (other lines are skipped)."""
    found: list[AuditCheckpoint] = []
    problems: list[Finding] = []
    for number, line in enumerate(lines, 1):
        if LOG_EVENT not in line:
            continue
        try:
            value = json.loads(line)
            if value.get("event") != LOG_EVENT:
                continue
            found.append(AuditCheckpoint(
                id=None, node=str(value["node"]), kind=str(value["kind"]),
                seq=int(value["seq"]), hash=str(value["hash"]),
                at=datetime.fromisoformat(value["at"]), prev=value.get("prev"),
                digest=str(value["digest"]), signature=str(value["signature"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(Finding(f"{where}:{number}: not a readable {LOG_EVENT} line"))
    return found, problems


def verify_log_copy(rows: list[AuditEvent], stored: list[AuditCheckpoint],
                    copies: list[AuditCheckpoint], public_key: Ed25519PublicKey,
                    where: str) -> list[Finding]:
    """Cross-check the database against checkpoints kept outside it (the SIEM's copy)."""
    found: list[Finding] = []
    hashes = {r.seq: r.hash for r in rows}
    newest = rows[-1].seq if rows else 0
    digests = {cp.digest for cp in stored}
    for cp in copies:
        label = f"{where}: checkpoint ({cp.kind}, {cp.node}, {cp.at.isoformat()}, row {cp.seq})"
        if not signature_ok(cp, public_key):
            found.append(Finding(f"{label}: the signature does not verify (not from this "
                                 "broker's key, or the copy was altered)"))
            continue
        problem = _against_rows(cp, hashes, newest)
        if problem:
            found.append(Finding(f"{where}: {problem.replace('checkpoint ? ', 'checkpoint ')}"))
        if cp.digest not in digests:
            found.append(Finding(f"{label} is missing from the database: checkpoints were "
                                 "deleted"))
    if not copies:
        found.append(Finding(f"{where}: no {LOG_EVENT} lines found"))
    return found


@dataclass(frozen=True)
class AuditCheck:
    """``broker audit verify``'s verdict (also the API's and the staff portal's)."""

    rows: int
    checkpoints: int
    chain: list[ChainProblem]
    findings: list[Finding]

    @property
    def problems(self) -> list[ChainProblem | Finding]:
        return [*self.chain, *(f for f in self.findings if not f.note)]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.note]


async def check(ctx: Context, copies: list[AuditCheckpoint] | None = None,
                where: str = "") -> AuditCheck:
    """Every link of the chain and every signed checkpoint, now; with ``copies`` (the
    checkpoint lines of a log copy kept elsewhere) the database is checked against them."""
    from broker.recording.manifest import signer_for

    public_key = signer_for(ctx.config).public_key
    async with ctx.store.session() as db:
        rows = [row async for row in iter_events(db)]
        stored = await load(db)

    def work() -> AuditCheck:
        count, chain = verify_rows(rows)
        found = verify_checkpoints(rows, stored, public_key, ctx.now())
        if copies is not None:
            found += verify_log_copy(rows, stored, copies, public_key, where)
        return AuditCheck(count, len(stored), chain, found)

    return await asyncio.to_thread(work)


async def load(db: AsyncSession) -> list[AuditCheckpoint]:
    return list((await db.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.id)))
                 ).all())
