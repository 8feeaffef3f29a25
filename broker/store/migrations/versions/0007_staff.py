"""staff accounts and portal sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 06:30:00

* ``staff_user``: web UI accounts (approver, auditor, admin) with an Argon2id password hash,
  an optional vault-encrypted TOTP secret and the newest TOTP step used (single use).
* ``staff_session``: signed-in browsers; only the SHA-256 of the cookie's id is stored.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('staff_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('totp_secret', sa.LargeBinary(), nullable=True),
    sa.Column('totp_last_step', sa.Integer(), nullable=True),
    sa.Column('approver_name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_user_name'), ['name'], unique=True)

    op.create_table('staff_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('mfa_pending', sa.Boolean(), nullable=False),
    sa.Column('csrf_binding', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['staff_user.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('staff_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_session_token_hash'), ['token_hash'],
                              unique=True)
        batch_op.create_index(batch_op.f('ix_staff_session_user_id'), ['user_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('staff_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_session_user_id'))
        batch_op.drop_index(batch_op.f('ix_staff_session_token_hash'))
    op.drop_table('staff_session')

    with op.batch_alter_table('staff_user', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_user_name'))
    op.drop_table('staff_user')
