"""Vendors as organisations

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 23:30:00

* ``vendor``: a technicians' employer, with its mail domains, contact, contract end and an
  on/off switch.
* ``technician``: ``vendor_id`` (the vendor row; ``vendor`` keeps the name as text),
  ``expires_at``, ``last_login_at`` and ``enabled_at`` (the inactivity clock's restart; set
  to the upgrade's time for existing technicians, so none is disabled for inactivity at once).

Existing installs: one vendor row is created for each distinct ``technician.vendor`` text
(no domains, no contract end, enabled) and every technician is linked to its row, so nobody
loses access by upgrading.
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _utc(name: str) -> sa.Column:
    return sa.Column(name, broker.store.types.UTCDateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table('vendor',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('domains', sa.JSON(), nullable=False),
    sa.Column('contact', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    _utc('contract_end'),
    sa.Column('contract_end_noted', sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column('disabled', sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_vendor_name', 'vendor', ['name'], unique=True)
    with op.batch_alter_table('technician') as batch:
        batch.add_column(sa.Column('vendor_id', sa.Integer(), nullable=True))
        batch.add_column(_utc('expires_at'))
        batch.add_column(_utc('last_login_at'))
        batch.add_column(_utc('enabled_at'))
        batch.create_index('ix_technician_vendor_id', ['vendor_id'], unique=False)
        batch.create_foreign_key('fk_technician_vendor_id', 'vendor', ['vendor_id'], ['id'])
    conn = op.get_bind()
    vendor = sa.table('vendor', sa.column('id', sa.Integer), sa.column('name', sa.String),
                      sa.column('domains', sa.JSON),
                      sa.column('created_at', broker.store.types.UTCDateTime(timezone=True)),
                      sa.column('contract_end_noted', sa.Boolean),
                      sa.column('disabled', sa.Boolean))
    technician = sa.table('technician', sa.column('vendor', sa.String),
                          sa.column('vendor_id', sa.Integer),
                          sa.column('enabled_at', broker.store.types.UTCDateTime(timezone=True)))
    names = sorted(row[0] for row in conn.execute(
        sa.select(technician.c.vendor).distinct()))
    now = datetime.now(timezone.utc)
    # the inactivity clock starts at the upgrade, not at each technician's creation
    conn.execute(technician.update().values(enabled_at=now))
    for name in names:
        conn.execute(vendor.insert().values(name=name, domains=[], created_at=now,
                                            contract_end_noted=False, disabled=False))
        ident = conn.execute(sa.select(vendor.c.id).where(vendor.c.name == name)).scalar_one()
        conn.execute(technician.update().where(technician.c.vendor == name)
                     .values(vendor_id=ident))


def downgrade() -> None:
    with op.batch_alter_table('technician') as batch:
        batch.drop_constraint('fk_technician_vendor_id', type_='foreignkey')
        batch.drop_index('ix_technician_vendor_id')
        batch.drop_column('enabled_at')
        batch.drop_column('last_login_at')
        batch.drop_column('expires_at')
        batch.drop_column('vendor_id')
    op.drop_index('ix_vendor_name', table_name='vendor')
    op.drop_table('vendor')
