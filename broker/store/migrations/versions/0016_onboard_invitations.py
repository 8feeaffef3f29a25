"""Vendor self-service: technician invitations and the vendor contact's sign-in

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 04:40:00

* ``invitation``: an e-mailed onboarding link (hash of its secret only), its state
  (open, pending, approved, rejected) and the technician it created.
* ``vendor_login``: a vendor contact's sign-in link and the browser session it opened
  (hashes only).
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def _utc(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, broker.store.types.UTCDateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int, nullable: bool) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table('invitation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    _text('email', 320, False),
    _text('name', 63, True),
    _text('token_hash', 64, False),
    _text('state', 16, False),
    _utc('expires_at', False),
    _text('created_by', 200, False),
    _utc('created_at', False),
    _utc('used_at', True),
    sa.Column('technician_id', sa.Integer(), nullable=True),
    _text('decided_by', 200, True),
    _utc('decided_at', True),
    sa.ForeignKeyConstraint(['technician_id'], ['technician.id'], ),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_index(op.f('ix_invitation_vendor_id'), 'invitation', ['vendor_id'], unique=False)
    op.create_index(op.f('ix_invitation_state'), 'invitation', ['state'], unique=False)
    op.create_index(op.f('ix_invitation_technician_id'), 'invitation', ['technician_id'],
                    unique=False)
    op.create_table('vendor_login',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('vendor_id', sa.Integer(), nullable=False),
    _text('email', 320, False),
    _text('token_hash', 64, False),
    _utc('link_expires_at', False),
    _utc('used_at', True),
    _text('session_hash', 64, True),
    _text('csrf_binding', 64, True),
    _utc('session_expires_at', True),
    _utc('created_at', False),
    sa.ForeignKeyConstraint(['vendor_id'], ['vendor.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash'),
    sa.UniqueConstraint('session_hash')
    )
    op.create_index(op.f('ix_vendor_login_vendor_id'), 'vendor_login', ['vendor_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_vendor_login_vendor_id'), table_name='vendor_login')
    op.drop_table('vendor_login')
    op.drop_index(op.f('ix_invitation_technician_id'), table_name='invitation')
    op.drop_index(op.f('ix_invitation_state'), table_name='invitation')
    op.drop_index(op.f('ix_invitation_vendor_id'), table_name='invitation')
    op.drop_table('invitation')
