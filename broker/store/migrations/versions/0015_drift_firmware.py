"""Firmware drift: device probes, session probe readings, firmware history

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 04:30:00

* ``device.probe``: the admin's read-only probe command (NULL: none).
* ``device.firmware_observed`` / ``_at`` / ``_session``: a probe output that differs from the
  accepted baseline (``device.firmware``), waiting for an admin to accept it.
* ``session.probe_before`` / ``probe_after``: the probe's output (or ``probe failed: ...``)
  before and after the session.
* ``firmware_reading``: every probe run and every accepted baseline, per device.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('device') as batch:
        batch.add_column(sa.Column('probe', sqlmodel.sql.sqltypes.AutoString(length=500),
                                   nullable=True))
        batch.add_column(sa.Column('firmware_observed', sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))
        batch.add_column(sa.Column('firmware_observed_at',
                                   broker.store.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('firmware_observed_session',
                                   sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
    with op.batch_alter_table('session') as batch:
        batch.add_column(sa.Column('probe_before', sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))
        batch.add_column(sa.Column('probe_after', sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))
    op.create_table('firmware_reading',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('session_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
    sa.Column('phase', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('value', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('changed', sa.Boolean(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_firmware_reading_device_id', 'firmware_reading', ['device_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_firmware_reading_device_id', table_name='firmware_reading')
    op.drop_table('firmware_reading')
    with op.batch_alter_table('session') as batch:
        batch.drop_column('probe_after')
        batch.drop_column('probe_before')
    with op.batch_alter_table('device') as batch:
        batch.drop_column('firmware_observed_session')
        batch.drop_column('firmware_observed_at')
        batch.drop_column('firmware_observed')
        batch.drop_column('probe')
