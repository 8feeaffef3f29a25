"""Checking the audit log: every link of the hash chain, and what the signed checkpoints
(:mod:`broker.audit.checkpoints`) say about the rows: a row changed or deleted up to a
checkpoint, the newest rows gone, a forged checkpoint, rows no checkpoint covers, a node's
checkpoint chain cut, a node that stopped without a clean shutdown; and, given the
``audit.checkpoint`` lines of a log copy kept elsewhere, checkpoints deleted from the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.chain import GENESIS, ChainProblem, iter_events, verify_rows
from broker.audit.checkpoints import (
    GRACE,
    LEGACY,
    LOG_EVENT,
    SERVER_KINDS,
    STALE,
    load,
    signature_ok,
)
from broker.store.models import AuditCheckpoint, AuditEvent

if TYPE_CHECKING:
    from broker.services.context import Context


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
