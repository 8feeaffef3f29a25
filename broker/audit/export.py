"""Exporting the audit log as JSON lines or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator
from typing import Any, TextIO

from broker.store.models import AuditEvent

COLUMNS = ["seq", "ts", "kind", "actor", "subject", "data", "prev_hash", "hash"]


def as_dict(row: AuditEvent) -> dict[str, Any]:
    return {"seq": row.seq, "ts": row.ts.isoformat(), "kind": row.kind, "actor": row.actor,
            "subject": row.subject, "data": json.loads(row.data), "prev_hash": row.prev_hash,
            "hash": row.hash}


async def write_export(rows: AsyncIterator[AuditEvent], out: TextIO, fmt: str) -> int:
    count = 0
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(COLUMNS)
    async for row in rows:
        record = as_dict(row)
        if writer:
            record["data"] = row.data
            writer.writerow([record[c] for c in COLUMNS])
        else:
            out.write(json.dumps(record, sort_keys=True) + "\n")
        count += 1
    return count
