"""The store on a real PostgreSQL: migrations match the models, the audit chain stays linear
under concurrent writers, and the CLI works end to end with a postgresql+asyncpg URL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel, select

from broker.audit.chain import verify_rows
from broker.config import load_config
from broker.services.context import Context
from broker.services.setup import migrate_database
from broker.store.engine import Store, alembic_config
from broker.store.models import AuditEvent
from tests.conftest import Cli
from tests.pg_kit import PostgresCluster


async def test_migrations_run_on_postgres_and_match_the_models(
        postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    await migrate_database(url)
    store = Store(url)
    try:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert await store.current_revision() == head
        await store.check_migrated()

        def diff(connection: Any) -> list[Any]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))

        async with store.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await store.close()


async def test_concurrent_writers_keep_one_audit_chain(postgres: PostgresCluster,
                                                       broker_dir: Path) -> None:
    url = postgres.create_database()
    await migrate_database(url)
    config = load_config(broker_dir / "broker.toml", environ={"BROKER_BROKER_DATABASE_URL": url})
    contexts = [Context.open(config) for _ in range(4)]  # four engines, like four nodes

    async def write(ctx: Context, n: int) -> None:
        for i in range(15):
            async with ctx.store.session() as db:
                await ctx.audit(db, "test.event", f"writer-{n}", None, i=i)

    try:
        await asyncio.gather(*(write(ctx, n) for n, ctx in enumerate(contexts)))
        async with contexts[0].store.session() as db:
            rows = (await db.exec(select(AuditEvent).order_by(AuditEvent.seq))).all()
        assert [row.seq for row in rows] == list(range(1, 61))
        count, problems = verify_rows(rows)
        assert count == 60 and problems == []
    finally:
        for ctx in contexts:
            await ctx.close()


def test_cli_on_postgres(postgres: PostgresCluster, cli: Cli, ssh_pubkey: Path) -> None:
    env = {"BROKER_BROKER_DATABASE_URL": postgres.create_database()}
    assert cli("migrate", env=env).code == 0
    added = cli("tech", "add", "alice", "--vendor", "BD", "--key", ssh_pubkey, env=env)
    assert added.code == 0, added.err
    assert "alice" in cli("tech", "list", env=env).out
    verify = cli("audit", "verify", env=env)
    assert verify.code == 0, verify.err
    # the SQLite database next to broker.toml was never touched
    assert "alice" not in cli("tech", "list").out
