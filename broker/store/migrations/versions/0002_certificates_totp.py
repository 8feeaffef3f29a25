"""issued certificates; TOTP replay protection

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 10:00:00

* ``issued_certificate``: one row per short-lived OpenSSH user certificate the broker signed
  (serial is a random 63-bit number, hence BIGINT on PostgreSQL).
* ``technician.totp_last_step``: the newest TOTP time step accepted, so that a code can be
  used only once.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('issued_certificate',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('serial', sa.BigInteger(), nullable=False),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('technician_id', sa.Integer(), nullable=False),
    sa.Column('key_fingerprint', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('valid_after', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('valid_before', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('issued_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('issued_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['grant.id'], ),
    sa.ForeignKeyConstraint(['technician_id'], ['technician.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('serial')
    )
    with op.batch_alter_table('issued_certificate', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_issued_certificate_grant_id'), ['grant_id'],
                              unique=False)

    with op.batch_alter_table('technician', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_last_step', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('technician', schema=None) as batch_op:
        batch_op.drop_column('totp_last_step')

    with op.batch_alter_table('issued_certificate', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_issued_certificate_grant_id'))

    op.drop_table('issued_certificate')
