"""Alembic environment: runs on the connection the broker hands over (sync facade of async)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import broker.store.models  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations through 'broker migrate' (it supplies the connection)")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
