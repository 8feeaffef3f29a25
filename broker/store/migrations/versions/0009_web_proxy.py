"""device web proxy sign-ins

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 06:30:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def _utc(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, broker.store.types.UTCDateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int | None = None, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table('device_web',
    sa.Column('device_id', sa.Integer(), nullable=False),
    _text('ca_pem', nullable=True),
    _text('pin_sha256', 64, nullable=True),
    sa.Column('allow_http', sa.Boolean(), nullable=False),
    _text('auth', 10),
    _text('form_path', 500, nullable=True),
    _text('form_user_field', 100),
    _text('form_password_field', 100),
    _utc('updated_at'),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.PrimaryKeyConstraint('device_id')
    )
    op.create_table('web_signin',
    sa.Column('id', sa.Integer(), nullable=False),
    _text('token_hash', 64),
    sa.Column('technician_id', sa.Integer(), nullable=False),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    _utc('created_at'),
    _utc('expires_at'),
    _utc('used_at', nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.ForeignKeyConstraint(['grant_id'], ['grant.id'], ),
    sa.ForeignKeyConstraint(['technician_id'], ['technician.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('web_signin', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_signin_grant_id'), ['grant_id'], unique=False)
    op.create_table('web_session',
    _text('id', 40),
    _text('cookie_hash', 64),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('technician_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    _text('client_addr', 200, nullable=True),
    _utc('created_at'),
    _utc('ended_at', nullable=True),
    _text('end_reason', 300, nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.ForeignKeyConstraint(['grant_id'], ['grant.id'], ),
    sa.ForeignKeyConstraint(['technician_id'], ['technician.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cookie_hash')
    )
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_web_session_grant_id'), ['grant_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_session_grant_id'))
    op.drop_table('web_session')
    with op.batch_alter_table('web_signin', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_signin_grant_id'))
    op.drop_table('web_signin')
    op.drop_table('device_web')
