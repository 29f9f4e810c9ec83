"""federated: survivors' signatures over the survivor / dropped sets (consistency check before
unmasking)

Revision ID: fed_consistency_b1
Revises: fed_secagg_b2
Create Date: 2026-12-01 21:55:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'fed_consistency_b1'
down_revision: str | None = 'fed_secagg_b2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('round_participants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('consistency_signature', sa.LargeBinary(length=64),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('round_participants', schema=None) as batch_op:
        batch_op.drop_column('consistency_signature')
