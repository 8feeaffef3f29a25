"""device credential rotation

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 06:30:00

* ``device.rotate_method``: chpasswd | passwd | authorized_key (NULL: by credential kind).
* ``device.rotation_due_at/_reason/_attempts``: a rotation waiting to be done (restart-proof),
  with the failures in a row that set its back-off.
* ``device.rotation_claimed_by/_until``: the lease of the node working it (multi-node).
* ``device.rotated_at``: the last successful rotation.
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
    with op.batch_alter_table('device') as batch:
        batch.add_column(sa.Column('rotate_method', sqlmodel.sql.sqltypes.AutoString(length=20),
                                   nullable=True))
        batch.add_column(sa.Column('rotation_due_at',
                                   broker.store.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('rotation_reason',
                                   sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column('rotation_attempts', sa.Integer(), nullable=False,
                                   server_default='0'))
        batch.add_column(sa.Column('rotation_claimed_by',
                                   sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch.add_column(sa.Column('rotation_claimed_until',
                                   broker.store.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('rotated_at', broker.store.types.UTCDateTime(timezone=True),
                                   nullable=True))
        batch.create_index('ix_device_rotation_due_at', ['rotation_due_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('device') as batch:
        batch.drop_index('ix_device_rotation_due_at')
        for column in ('rotated_at', 'rotation_claimed_until', 'rotation_claimed_by',
                       'rotation_attempts', 'rotation_reason', 'rotation_due_at',
                       'rotate_method'):
            batch.drop_column(column)
