"""federated: secure-aggregation rounds (stages, signed round keys, relayed shares), identity
keys, federation keys for round state at rest, DP noise-skipper tolerance

Revision ID: fed_secagg_b2
Revises: 0003_acct_composition
Create Date: 2026-12-01 21:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'fed_secagg_b2'
down_revision: str | None = '0003_acct_composition'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dp_noise_skippers', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('wrapped_key', sa.LargeBinary(), nullable=True))
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity_key', sa.LargeBinary(length=32), nullable=True))
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stage', sa.String(length=16), server_default='advertise',
                                      nullable=False))
        batch_op.add_column(sa.Column('stage_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('threshold', sa.Integer(), nullable=True))
    op.create_table('round_participants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=False),
    sa.Column('c_public', sa.LargeBinary(length=32), nullable=False),
    sa.Column('s_public', sa.LargeBinary(length=32), nullable=False),
    sa.Column('signature', sa.LargeBinary(length=64), nullable=False),
    sa.Column('shared', sa.Boolean(), nullable=False),
    sa.Column('uploaded', sa.Boolean(), nullable=False),
    sa.Column('unmask_token', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('round_id', 'client_id')
    )
    with op.batch_alter_table('round_participants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_round_participants_client_id'), ['client_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_round_participants_round_id'), ['round_id'], unique=False)
    op.create_table('round_shares',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('sender_id', sa.Integer(), nullable=False),
    sa.Column('recipient_id', sa.Integer(), nullable=False),
    sa.Column('token', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['recipient_id'], ['users.id'], ),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], ),
    sa.ForeignKeyConstraint(['sender_id'], ['users.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('round_id', 'recipient_id', 'sender_id')
    )
    with op.batch_alter_table('round_shares', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_round_shares_round_id'), ['round_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('round_shares', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_round_shares_round_id'))
    op.drop_table('round_shares')
    with op.batch_alter_table('round_participants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_round_participants_round_id'))
        batch_op.drop_index(batch_op.f('ix_round_participants_client_id'))
    op.drop_table('round_participants')
    with op.batch_alter_table('rounds', schema=None) as batch_op:
        batch_op.drop_column('threshold')
        batch_op.drop_column('stage_seconds')
        batch_op.drop_column('stage')
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_column('identity_key')
    with op.batch_alter_table('federations', schema=None) as batch_op:
        batch_op.drop_column('wrapped_key')
        batch_op.drop_column('dp_noise_skippers')
