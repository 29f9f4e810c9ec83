"""ledger: per-budget hash chain (seq, prev_hash, entry_hash), renewal periods and lifetime
spend on budgets; existing entries backfilled into chains in the order they were written

Each budget's (and each federation's) entries are chained by (created_at, id), the order the
ledger lists them in; the budget row gets the chain's length and head. Existing spend is all in
period 0, so each budget's lifetime spend starts as its spent.

Revision ID: ledger_chain_a1
Revises: cache_version_kind_a1
Create Date: 2026-12-02 10:00:00
"""
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from privacy_api.domain import ledger_chain

revision: str = 'ledger_chain_a1'
down_revision: str | None = 'cache_version_kind_a1'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = ledger_chain.GENESIS


def _anchor_columns() -> list[sa.Column[Any]]:
    return [sa.Column('ledger_count', sa.Integer(), server_default='0', nullable=False),
            sa.Column('ledger_head', sa.String(length=64), server_default=GENESIS,
                      nullable=False)]


def upgrade() -> None:
    with op.batch_alter_table('budgets') as batch:
        batch.add_column(sa.Column('renewal_period', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('period', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('period_start', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('period_ends_at', sa.DateTime(timezone=True), nullable=True))
        for name in ('lifetime_epsilon_spent', 'lifetime_delta_spent'):
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default='0', nullable=False))
        for name in ('lifetime_epsilon_cap', 'lifetime_delta_cap'):
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
        for column in _anchor_columns():
            batch.add_column(column)
    with op.batch_alter_table('federations') as batch:
        for column in _anchor_columns():
            batch.add_column(column)
    with op.batch_alter_table('ledger_entries') as batch:
        batch.add_column(sa.Column('chain_seq', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('prev_hash', sa.String(length=64), server_default=GENESIS,
                                   nullable=False))
        batch.add_column(sa.Column('entry_hash', sa.String(length=64), server_default='',
                                   nullable=False))
        batch.add_column(sa.Column('period', sa.Integer(), server_default='0', nullable=False))
    _backfill(op.get_bind())


def _backfill(conn: sa.Connection) -> None:
    budgets = sa.table('budgets', sa.column('id'), sa.column('user_id'), sa.column('dataset_id'),
                       sa.column('epsilon_spent'), sa.column('delta_spent'),
                       sa.column('lifetime_epsilon_spent'), sa.column('lifetime_delta_spent'),
                       sa.column('ledger_count'), sa.column('ledger_head'))
    federations = sa.table('federations', sa.column('id'), sa.column('ledger_count'),
                           sa.column('ledger_head'))
    ledger = sa.table(
        'ledger_entries', *(sa.column(c) for c in (
            'id', 'user_id', 'dataset_id', 'federation_id', 'round_id', 'fingerprint',
            'aggregate', 'mechanism', 'epsilon_requested', 'delta_requested', 'epsilon_charged',
            'delta_charged', 'replay_of', 'chain_seq', 'prev_hash', 'entry_hash', 'period')),
        sa.column('privacy_events', sa.JSON()), sa.column('created_at', sa.DateTime(True)))

    def chain(name: str, where: Any) -> tuple[int, str]:
        head, seq = GENESIS, 0
        rows = conn.execute(sa.select(ledger).where(where)
                            .order_by(ledger.c.created_at, ledger.c.id)).all()
        for row in rows:
            seq += 1
            body = ledger_chain.payload(
                chain=name, seq=seq, prev_hash=head, id=row.id, user_id=row.user_id,
                fingerprint=row.fingerprint, aggregate=row.aggregate, mechanism=row.mechanism,
                epsilon_requested=row.epsilon_requested, delta_requested=row.delta_requested,
                epsilon_charged=row.epsilon_charged, delta_charged=row.delta_charged,
                events=row.privacy_events or [], period=0, replay_of=row.replay_of,
                round_id=row.round_id, created_at=row.created_at)
            digest = ledger_chain.entry_hash(body)
            conn.execute(ledger.update().where(ledger.c.id == row.id).values(
                chain_seq=seq, prev_hash=head, entry_hash=digest, period=0))
            head = digest
        return seq, head

    for b in conn.execute(sa.select(budgets)).all():
        count, head = chain(ledger_chain.budget_chain(b.user_id, b.dataset_id),
                            sa.and_(ledger.c.user_id == b.user_id,
                                    ledger.c.dataset_id == b.dataset_id,
                                    ledger.c.federation_id.is_(None)))
        conn.execute(budgets.update().where(budgets.c.id == b.id).values(
            ledger_count=count, ledger_head=head, lifetime_epsilon_spent=b.epsilon_spent,
            lifetime_delta_spent=b.delta_spent))
    for f in conn.execute(sa.select(federations.c.id)).all():
        count, head = chain(ledger_chain.federation_chain(f.id), ledger.c.federation_id == f.id)
        conn.execute(federations.update().where(federations.c.id == f.id).values(
            ledger_count=count, ledger_head=head))


def downgrade() -> None:
    with op.batch_alter_table('ledger_entries') as batch:
        for name in ('period', 'entry_hash', 'prev_hash', 'chain_seq'):
            batch.drop_column(name)
    with op.batch_alter_table('federations') as batch:
        batch.drop_column('ledger_head')
        batch.drop_column('ledger_count')
    with op.batch_alter_table('budgets') as batch:
        for name in ('ledger_head', 'ledger_count', 'lifetime_delta_cap', 'lifetime_epsilon_cap',
                     'lifetime_delta_spent', 'lifetime_epsilon_spent', 'period_ends_at',
                     'period_start', 'period', 'renewal_period'):
            batch.drop_column(name)
