"""signed audit checkpoints

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 22:00:00

An existing audit chain gets one unsigned ``legacy`` checkpoint naming its current head: the
rows up to it were only hash-chained. The first broker process with the signing key records
an ``audit.signing_started`` event about it and signs the head (broker.audit.checkpoints);
``broker audit verify`` reports the legacy range as a note on every run.
"""
import hashlib
from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table('audit_checkpoint',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('prev', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    with op.batch_alter_table('audit_checkpoint', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_checkpoint_node'), ['node'], unique=False)
    head = op.get_bind().execute(sa.text(
        "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")).first()
    if head is not None:
        seq, digest_of = head
        op.bulk_insert(table, [{
            "node": "migration-0011", "kind": "legacy", "seq": seq, "hash": digest_of,
            "at": datetime.now(UTC), "prev": None, "signature": "",
            "digest": hashlib.sha256(f"legacy {seq} {digest_of}".encode()).hexdigest()}])


def downgrade() -> None:
    with op.batch_alter_table('audit_checkpoint', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_checkpoint_node'))
    op.drop_table('audit_checkpoint')
