"""Every command checks the database's schema against the newest migration without importing
alembic: the revision it knows must be alembic's own head, and the check must read the
database as alembic would."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from broker.errors import StoreError
from broker.services.setup import migrate_database
from broker.store.engine import SCHEMA_HEAD, Store, alembic_config, head_revision


def test_the_known_head_is_the_newest_migration() -> None:
    newest = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert newest == SCHEMA_HEAD, (
        f"a migration was added: set SCHEMA_HEAD in broker/store/engine.py to {newest!r}")
    assert head_revision() == newest


async def test_a_database_is_read_before_and_after_its_migration(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'broker.db'}"
    store = Store(url)
    try:
        assert await store.current_revision() is None
        with pytest.raises(StoreError, match="is not initialised, expected 0"):
            await store.check_migrated()
        await migrate_database(url)
        assert await store.current_revision() == SCHEMA_HEAD
        await store.check_migrated()
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql(
                "UPDATE alembic_version SET version_num = '0001'")
        with pytest.raises(StoreError, match="is at revision 0001, expected 0"):
            await store.check_migrated()
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("INSERT INTO alembic_version VALUES ('0002')")
        with pytest.raises(StoreError, match=r"schema has 2 heads \(0001, 0002\)"):
            await store.current_revision()
    finally:
        await store.close()
