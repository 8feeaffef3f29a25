"""break-glass grants and their reviews

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 06:30:00

``grant.breakglass`` and ``grant.reviewed_at`` exist since 0001; this adds why and by whom a
break-glass grant was opened, and who reviewed it with what comment.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('grant') as batch:
        batch.add_column(sa.Column('breakglass_reason', sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))
        batch.add_column(sa.Column('breakglass_by',
                                   sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column('reviewed_by', sqlmodel.sql.sqltypes.AutoString(length=63),
                                   nullable=True))
        batch.add_column(sa.Column('review_comment', sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('grant') as batch:
        batch.drop_column('review_comment')
        batch.drop_column('reviewed_by')
        batch.drop_column('breakglass_by')
        batch.drop_column('breakglass_reason')
