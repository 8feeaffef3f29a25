"""device credential rotation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 06:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
