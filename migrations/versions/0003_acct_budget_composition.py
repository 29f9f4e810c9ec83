"""budgets: stored composition (basic sums and the Gaussian RDP slope rho), backfilled

Every charge now updates these columns in its own transaction, so the accountant never reads
the ledger. Existing budgets get them from their charged (non-replay) ledger entries, by the
rule the service applies per charge (services/ledger.py StoredComposition.plus): each event's
epsilon*count and delta*count rounded up to integer units, rho = sum of count/(2 sigma^2).

Revision ID: 0003_acct_composition
Revises: c2edge_dashboard_sessions
Create Date: 2026-12-01 21:45:00
"""
from collections.abc import Sequence
from decimal import ROUND_CEILING, Decimal

import sqlalchemy as sa
from alembic import op

from mechanisms.accounting import PrivacyEvent, add_rho, gaussian_rho

revision: str = '0003_acct_composition'
down_revision: str | None = 'c2edge_dashboard_sessions'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ('basic_epsilon', 'basic_delta', 'pure_epsilon', 'pure_delta')
# privacy_api/domain/units.py at the time of writing: epsilon in 1e-12 quanta, delta in 1e-18.
_EPS_QUANTUM, _DELTA_QUANTUM = Decimal('1e-12'), Decimal('1e-18')


def _units(value: Decimal, quantum: Decimal) -> int:
    return int((value / quantum).to_integral_value(rounding=ROUND_CEILING))


def upgrade() -> None:
    with op.batch_alter_table('budgets') as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default='0', nullable=False))
        batch.add_column(sa.Column('gaussian_rho', sa.String(length=64), server_default='0',
                                   nullable=False))
    conn = op.get_bind()
    budgets = sa.table('budgets', sa.column('id'), sa.column('user_id'), sa.column('dataset_id'),
                       *(sa.column(c) for c in _COLUMNS), sa.column('gaussian_rho'))
    ledger = sa.table('ledger_entries', sa.column('user_id'), sa.column('dataset_id'),
                      sa.column('replay_of'), sa.column('epsilon_requested'),
                      sa.column('delta_requested'), sa.column('privacy_events', sa.JSON()))
    for budget_id, user_id, dataset_id in conn.execute(
            sa.select(budgets.c.id, budgets.c.user_id, budgets.c.dataset_id)).all():
        basic_e = basic_d = pure_e = pure_d = 0
        rho = Decimal(0)
        entries = conn.execute(
            sa.select(ledger.c.epsilon_requested, ledger.c.delta_requested,
                      ledger.c.privacy_events)
            .where(ledger.c.user_id == user_id, ledger.c.dataset_id == dataset_id,
                   ledger.c.replay_of.is_(None)))
        for eps_requested, delta_requested, rows in entries:
            if not rows:  # no events recorded: the request itself, by basic composition
                basic_e, basic_d = basic_e + eps_requested, basic_d + delta_requested
                pure_e, pure_d = pure_e + eps_requested, pure_d + delta_requested
                continue
            for e, d, multiplier, count in rows:
                event = PrivacyEvent(Decimal(e), Decimal(d), noise_multiplier=multiplier,
                                     count=count)
                eps = _units(event.epsilon * event.count, _EPS_QUANTUM)
                delta = _units(event.delta * event.count, _DELTA_QUANTUM)
                basic_e, basic_d = basic_e + eps, basic_d + delta
                if multiplier is None:
                    pure_e, pure_d = pure_e + eps, pure_d + delta
                else:
                    rho = add_rho(rho, gaussian_rho(event))
        conn.execute(budgets.update().where(budgets.c.id == budget_id).values(
            basic_epsilon=basic_e, basic_delta=basic_d, pure_epsilon=pure_e, pure_delta=pure_d,
            gaussian_rho=str(rho)))


def downgrade() -> None:
    with op.batch_alter_table('budgets') as batch:
        for name in ('gaussian_rho', *reversed(_COLUMNS)):
            batch.drop_column(name)
