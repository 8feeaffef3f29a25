"""approval links and notifications

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 06:30:00

* ``used_approval_token``: the ids of spent approval links, kept until the link expires.
* ``notification_cursor``: how far along the audit chain notifications are planned; starts at
  the chain's current head, so an upgraded broker does not notify its whole history.
* ``notification``: the outbox of webhook and e-mail deliveries, with their retry state.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('used_approval_token',
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('approver', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('used_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('jti')
    )
    with op.batch_alter_table('used_approval_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_used_approval_token_request_id'), ['request_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_used_approval_token_expires_at'), ['expires_at'],
                              unique=False)

    op.create_table('notification_cursor',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.execute("INSERT INTO notification_cursor (name, seq) "
               "SELECT 'notify', COALESCE(MAX(seq), 0) FROM audit_event")

    op.create_table('notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_seq', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('payload', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', broker.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('leased_by', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', broker.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_seq', 'channel', 'recipient')
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.create_index('ix_notification_due', ['state', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_due')
    op.drop_table('notification')
    op.drop_table('notification_cursor')
    with op.batch_alter_table('used_approval_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_used_approval_token_expires_at'))
        batch_op.drop_index(batch_op.f('ix_used_approval_token_request_id'))
    op.drop_table('used_approval_token')
