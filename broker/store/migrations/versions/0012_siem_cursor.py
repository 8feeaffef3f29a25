"""SIEM stream cursor

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 22:40:00

* ``siem_cursor``: how far along the audit chain the SIEM forwarder has sent, which node
  forwards (a claim with an expiry), and the last error. No row is seeded: the forwarder starts
  at seq 0, so a SIEM switched on later still receives the whole chain from its first event.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def _utc(name: str) -> sa.Column:
    return sa.Column(name, broker.store.types.UTCDateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table('siem_cursor',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    _utc('claimed_until'),
    _utc('last_sent_at'),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    _utc('last_error_at'),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('siem_cursor')
