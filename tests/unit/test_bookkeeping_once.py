"""Every worker of every node runs the scheduler's bookkeeping (grants falling due, pending
requests expiring): run at the same moment by several processes sharing one database, each
change is still made, and audited, exactly once. Four engines stand for four workers, on
SQLite (BEGIN IMMEDIATE) and on a real PostgreSQL (the audit chain's advisory lock taken
before the due rows are read)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from broker.cli.admin import migrate_database
from broker.config import load_config
from broker.services.context import Context
from broker.services.grants import refresh_states
from broker.services.requests import expire_pending
from broker.store.models import AccessRequest, AuditEvent, Device, Grant, Technician

GRANTS = REQUESTS = 5


async def _contexts(request: pytest.FixtureRequest, database: str,
                    broker_dir: Path) -> list[Context]:
    environ = {}
    if database == "postgresql":
        url = request.getfixturevalue("postgres").create_database()
        await migrate_database(url)
        environ["BROKER_BROKER_DATABASE_URL"] = url
    config = load_config(broker_dir / "broker.toml", environ=environ)
    return [Context.open(config) for _ in range(4)]


async def _due_rows(ctx: Context) -> None:
    now = ctx.now()
    async with ctx.store.session() as db:
        tech = Technician(name="tech", vendor="Acme", created_at=now)
        device = Device(name="dev", host="127.0.0.1", login_user="service", created_at=now)
        db.add_all([tech, device])
        await db.flush()
        assert tech.id is not None and device.id is not None
        db.add_all([Grant(technician_id=tech.id, device_id=device.id, protocols=["ssh"],
                          start=now - timedelta(hours=2), end=now - timedelta(minutes=1),
                          state="active", created_at=now) for _ in range(GRANTS)])
        db.add_all([AccessRequest(technician_id=tech.id, device_id=device.id,
                                  reason="test", duration_s=3600, state="pending", policy="default",
                                  created_at=now - timedelta(days=2),
                                  expires_at=now - timedelta(minutes=1))
                    for _ in range(REQUESTS)])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_workers_expire_each_grant_and_request_once(
        request: pytest.FixtureRequest, broker_dir: Path, database: str) -> None:
    contexts = await _contexts(request, database, broker_dir)
    try:
        await _due_rows(contexts[0])
        grants = await asyncio.gather(*(refresh_states(ctx) for ctx in contexts))
        requests = await asyncio.gather(*(expire_pending(ctx) for ctx in contexts))
        assert sorted(len(changes) for changes in grants) == [0, 0, 0, GRANTS]
        assert sorted(len(ids) for ids in requests) == [0, 0, 0, REQUESTS]
        async with contexts[0].store.session() as db:
            kinds = (await db.exec(select(AuditEvent.kind))).all()
            states = (await db.exec(select(Grant.state))).all()
        assert kinds.count("grant.expired") == GRANTS
        assert kinds.count("request.expired") == REQUESTS
        assert set(states) == {"expired"}
    finally:
        for ctx in contexts:
            await ctx.close()
