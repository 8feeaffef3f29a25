"""OpenID Connect staff sign-in

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 23:30:00

* ``staff_user.oidc_subject``: the identity provider's ``sub`` of an account made by OIDC
  sign-in (unique; NULL for local accounts).
* ``staff_session.via``: how the session was opened, ``password`` or ``oidc``.
* ``oidc_login``: sign-ins under way (state, nonce, PKCE verifier), spent by the callback.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import broker.store.types


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('staff_user') as batch:
        batch.add_column(sa.Column('oidc_subject', sqlmodel.sql.sqltypes.AutoString(length=255),
                                   nullable=True))
        batch.create_unique_constraint('uq_staff_user_oidc_subject', ['oidc_subject'])
    with op.batch_alter_table('staff_session') as batch:
        batch.add_column(sa.Column('via', sqlmodel.sql.sqltypes.AutoString(length=10),
                                   nullable=False, server_default='password'))
    op.create_table('oidc_login',
    sa.Column('state_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('browser_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('code_verifier', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('next_path', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('created_at', broker.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('state_hash')
    )


def downgrade() -> None:
    op.drop_table('oidc_login')
    with op.batch_alter_table('staff_session') as batch:
        batch.drop_column('via')
    with op.batch_alter_table('staff_user') as batch:
        batch.drop_constraint('uq_staff_user_oidc_subject', type_='unique')
        batch.drop_column('oidc_subject')
