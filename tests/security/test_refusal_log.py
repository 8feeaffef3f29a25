"""A flood of refusals from one source is summarised, never dropped and never a row each."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import col, select

from broker.config import load_config
from broker.services.context import Context
from broker.services.refusals import RefusalLog
from broker.store.models import AuditEvent


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _rows(ctx: Context) -> list[AuditEvent]:
    async with ctx.store.session() as db:
        return list((await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all())


async def test_flood_is_summarised_and_counted(broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    ticks = Ticks()
    log = RefusalLog(ctx, interval=60, burst=3, monotonic=ticks)
    try:
        before = len(await _rows(ctx))
        own = [await log.refused("ssh.refused", "unknown", "192.0.2.7", reason="bad-user")
               for _ in range(50)]
        assert own == [True] * 3 + [False] * 47
        assert await log.refused("ssh.refused", "unknown", "192.0.2.8", reason="bad-user")
        ticks.now = 61
        assert await log.refused("ssh.refused", "unknown", "192.0.2.7", reason="bad-user")
        rows = (await _rows(ctx))[before:]
        kinds = [row.kind for row in rows]
        assert kinds == ["ssh.refused"] * 4 + ["refusal.suppressed", "ssh.refused"]
        summary = json.loads(rows[4].data)
        assert summary["count"] == 47 and summary["source"] == "192.0.2.7"
        assert summary["refusal"] == "ssh.refused"
    finally:
        await ctx.close()


async def test_flush_and_eviction_write_pending_counts(broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    log = RefusalLog(ctx, interval=60, burst=1, max_sources=2, monotonic=Ticks())
    try:
        before = len(await _rows(ctx))
        for source in ("a", "a", "b", "b", "b", "c"):  # "c" evicts "a" (1 suppressed)
            await log.refused("api.refused", "anonymous", source)
        await log.flush()  # "b": 2 suppressed; "c": none
        rows = (await _rows(ctx))[before:]
        summaries = [json.loads(r.data) for r in rows if r.kind == "refusal.suppressed"]
        assert sorted((s["source"], s["count"]) for s in summaries) == [("a", 1), ("b", 2)]
        assert sum(r.kind == "api.refused" for r in rows) == 3
    finally:
        await ctx.close()
