"""cluster fan-out and sessions killable from any node

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 06:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('session') as batch:
        batch.add_column(sa.Column('kill_reason', sqlmodel.sql.sqltypes.AutoString(length=300),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('session') as batch:
        batch.drop_column('kill_reason')
