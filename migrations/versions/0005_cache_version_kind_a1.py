"""cache: how each dataset version came about (appends load incrementally)

Revision ID: cache_version_kind_a1
Revises: fed_consistency_b1
Create Date: 2026-12-02 00:40:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'cache_version_kind_a1'
down_revision: str | None = 'fed_consistency_b1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'dataset_versions',
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('records', sa.BigInteger(), nullable=False),
        sa.Column('max_record_id', sa.BigInteger(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'),
                  nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id']),
        sa.PrimaryKeyConstraint('dataset_id', 'version'),
    )


def downgrade() -> None:
    op.drop_table('dataset_versions')
