"""ledger: partial index for the replay lookup

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_ledger_entries_replay', 'ledger_entries',
                    ['user_id', 'dataset_id', 'fingerprint', 'dataset_version', 'created_at'],
                    unique=False, sqlite_where=sa.text('replay_of IS NULL'),
                    postgresql_where=sa.text('replay_of IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_ledger_entries_replay', table_name='ledger_entries')
