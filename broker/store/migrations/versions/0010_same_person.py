"""explicit links between an approver and a technician who are one person

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 22:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('same_person',
    sa.Column('approver_id', sa.Integer(), nullable=False),
    sa.Column('technician_id', sa.Integer(), nullable=False),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.ForeignKeyConstraint(['approver_id'], ['approver.id'], ),
    sa.ForeignKeyConstraint(['technician_id'], ['technician.id'], ),
    sa.PrimaryKeyConstraint('approver_id', 'technician_id')
    )


def downgrade() -> None:
    op.drop_table('same_person')
