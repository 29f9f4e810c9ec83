"""Per-(analyst, dataset) privacy budgets set by admins."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..domain.errors import Conflict, Forbidden, InvalidRequest, NotFound
from ..domain.renewal import RENEWAL_PERIODS, as_utc, period_end, period_start
from ..domain.units import delta_units, delta_value, eps_units, eps_value
from ..storage.models import Budget, Dataset, User, utcnow
from .audit import record_action

# The default of Settings.max_budget_delta (privacy_api/runtime/config.py).
DEFAULT_MAX_BUDGET_DELTA = Decimal("1e-3")


class Unset(Enum):
    """An optional field the admin left out: keep what the budget has."""

    UNSET = "unset"


UNSET = Unset.UNSET


def _min_or(value: Decimal, cap_left: Decimal | None) -> Decimal:
    return max(Decimal(0), value if cap_left is None else min(value, cap_left))


@dataclass(frozen=True)
class BudgetView:
    """A budget as of `now`: epsilon_total/delta_total are the limit per renewal period (the
    whole life of a budget without renewal), the spent fields the current period's, and the
    lifetime fields all periods' (basic composition across periods)."""

    user_id: int
    dataset_id: int
    epsilon_total: Decimal
    delta_total: Decimal
    epsilon_spent: Decimal
    delta_spent: Decimal
    queries: int
    frozen: bool
    renewal_period: str | None = None
    period_start: dt.datetime | None = None
    period_ends_at: dt.datetime | None = None
    lifetime_epsilon_spent: Decimal = Decimal(0)
    lifetime_delta_spent: Decimal = Decimal(0)
    lifetime_epsilon_cap: Decimal | None = None
    lifetime_delta_cap: Decimal | None = None
    ledger_count: int = 0
    ledger_head: str = ""

    @property
    def lifetime_epsilon_remaining(self) -> Decimal | None:
        if self.lifetime_epsilon_cap is None:
            return None
        return max(Decimal(0), self.lifetime_epsilon_cap - self.lifetime_epsilon_spent)

    @property
    def lifetime_delta_remaining(self) -> Decimal | None:
        if self.lifetime_delta_cap is None:
            return None
        return max(Decimal(0), self.lifetime_delta_cap - self.lifetime_delta_spent)

    @property
    def epsilon_remaining(self) -> Decimal:
        """What the next queries may spend: the period's remainder, or less under a lifetime cap."""
        return _min_or(self.epsilon_total - self.epsilon_spent, self.lifetime_epsilon_remaining)

    @property
    def delta_remaining(self) -> Decimal:
        return _min_or(self.delta_total - self.delta_spent, self.lifetime_delta_remaining)

    @classmethod
    def of(cls, b: Budget, now: dt.datetime | None = None) -> BudgetView:
        eps_spent, delta_spent = b.epsilon_spent, b.delta_spent
        start, ends = b.period_start, b.period_ends_at
        if b.renewal_period and ends is not None and as_utc(now or utcnow()) >= as_utc(ends):
            # the period is over; the next charge starts the next one: show that one, unspent
            start = period_start(b.renewal_period, now or utcnow())
            ends, eps_spent, delta_spent = period_end(b.renewal_period, start), 0, 0
        return cls(b.user_id, b.dataset_id, eps_value(b.epsilon_total), delta_value(b.delta_total),
                   eps_value(eps_spent), delta_value(delta_spent), b.queries, b.frozen,
                   b.renewal_period, start and as_utc(start), ends and as_utc(ends),
                   eps_value(b.lifetime_epsilon_spent), delta_value(b.lifetime_delta_spent),
                   None if b.lifetime_epsilon_cap is None else eps_value(b.lifetime_epsilon_cap),
                   None if b.lifetime_delta_cap is None else delta_value(b.lifetime_delta_cap),
                   b.ledger_count, b.ledger_head)


def set_budget(
    session: Session,
    actor: User | None,
    user_id: int,
    dataset_id: int,
    *,
    epsilon: Decimal | float | str,
    delta: Decimal | float | str,
    frozen: bool | None = None,
    max_delta: Decimal = DEFAULT_MAX_BUDGET_DELTA,
    renewal_period: str | None | Unset = UNSET,
    lifetime_epsilon_cap: Decimal | None | Unset = UNSET,
    lifetime_delta_cap: Decimal | None | Unset = UNSET,
    now: dt.datetime | None = None,
) -> Budget:
    """Grant or change a budget. Never below what is already spent (409); delta at most
    `max_delta` (the service's PRIVACY_API_MAX_BUDGET_DELTA, 422), unless it is the budget's
    current delta (a budget granted under a higher cap can still be frozen or changed in
    epsilon).

    `renewal_period` (daily | weekly | monthly, None for none): epsilon/delta become the limit
    per calendar period (UTC); turning renewal on keeps what is spent in the current period.
    `lifetime_*_cap` (None for no cap): the most all periods together may spend, never below
    what they already spent (409). Left UNSET, each keeps the budget's current value."""
    from .ledger import roll_period

    now = now or utcnow()
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    if user.role != "analyst":
        raise InvalidRequest("budgets are granted to analysts", {"user_id": [user.role]})
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.deleted_at is not None:
        raise NotFound("no such dataset")
    eps_u, delta_u = eps_units(epsilon), delta_units(delta)
    if eps_u < 0 or delta_u < 0 or delta_u >= delta_units(1):
        raise InvalidRequest("epsilon must be >= 0 and 0 <= delta < 1")
    budget = session.scalar(
        select(Budget).where(Budget.user_id == user_id, Budget.dataset_id == dataset_id)
        .with_for_update()
    )
    if delta_u > delta_units(max_delta) and (budget is None or delta_u != budget.delta_total):
        raise InvalidRequest(f"a budget's delta may be at most {max_delta} on this service",
                             {"delta": [f"at most {max_delta}"]})
    if renewal_period is not None and renewal_period is not UNSET \
            and renewal_period not in RENEWAL_PERIODS:
        raise InvalidRequest("unknown renewal period",
                             {"renewal_period": [f"one of none, {', '.join(RENEWAL_PERIODS)}"]})
    if budget is None:
        budget = Budget(user_id=user_id, dataset_id=dataset_id, epsilon_total=eps_u,
                        delta_total=delta_u, epsilon_spent=0, delta_spent=0, queries=0,
                        frozen=bool(frozen), period=0, lifetime_epsilon_spent=0,
                        lifetime_delta_spent=0)
        session.add(budget)
        action = "budget.grant"
    else:
        roll_period(budget, now)  # "below what is spent" means this period's spend
        if eps_u < budget.epsilon_spent or delta_u < budget.delta_spent:
            raise Conflict(
                "a budget cannot be set below what is already spent",
                {"epsilon_spent": float(eps_value(budget.epsilon_spent)),
                 "delta_spent": float(delta_value(budget.delta_spent))},
            )
        action = "budget.raise" if eps_u >= budget.epsilon_total else "budget.lower"
        budget.epsilon_total, budget.delta_total = eps_u, delta_u
        if frozen is not None:
            if frozen != budget.frozen:
                action = "budget.freeze" if frozen else "budget.unfreeze"
            budget.frozen = frozen
    if not isinstance(renewal_period, Unset) and renewal_period != budget.renewal_period:
        budget.renewal_period = renewal_period
        start = None if renewal_period is None else period_start(renewal_period, now)
        budget.period_start = start
        budget.period_ends_at = None if renewal_period is None or start is None \
            else period_end(renewal_period, start)
    _set_lifetime_caps(budget, lifetime_epsilon_cap, lifetime_delta_cap)
    session.flush()
    record_action(session, actor, action, f"budget:{user_id}/{dataset_id}",
                  epsilon=str(eps_value(eps_u)), delta=str(delta_value(delta_u)),
                  frozen=budget.frozen, renewal_period=budget.renewal_period,
                  lifetime_epsilon_cap=_text(budget.lifetime_epsilon_cap, eps_value),
                  lifetime_delta_cap=_text(budget.lifetime_delta_cap, delta_value))
    return budget


def _text(units: int | None, value: Callable[[int], Decimal]) -> str | None:
    return None if units is None else str(value(units))


def _set_lifetime_caps(budget: Budget, epsilon_cap: Decimal | None | Unset,
                       delta_cap: Decimal | None | Unset) -> None:
    eps_u = budget.lifetime_epsilon_cap if isinstance(epsilon_cap, Unset) \
        else None if epsilon_cap is None else eps_units(epsilon_cap)
    delta_u = budget.lifetime_delta_cap if isinstance(delta_cap, Unset) \
        else None if delta_cap is None else delta_units(delta_cap)
    if eps_u is not None and eps_u < budget.lifetime_epsilon_spent \
            or delta_u is not None and delta_u < budget.lifetime_delta_spent:
        raise Conflict(
            "a lifetime cap cannot be set below what is already spent",
            {"lifetime_epsilon_spent": float(eps_value(budget.lifetime_epsilon_spent)),
             "lifetime_delta_spent": float(delta_value(budget.lifetime_delta_spent))})
    budget.lifetime_epsilon_cap, budget.lifetime_delta_cap = eps_u, delta_u


def list_budgets(
    session: Session, viewer: User, *, user_id: int | None = None, dataset_id: int | None = None
) -> Sequence[Budget]:
    query = select(Budget).order_by(Budget.user_id, Budget.dataset_id)
    if viewer.role == "analyst":
        if user_id is not None and user_id != viewer.id:
            raise Forbidden("analysts may read only their own budgets")
        query = query.where(Budget.user_id == viewer.id)
    elif viewer.role == "owner":
        query = query.join(Dataset, Dataset.id == Budget.dataset_id).where(
            Dataset.owner_id == viewer.id)
    elif viewer.role != "admin":
        raise Forbidden("clients have no budgets")
    if user_id is not None:
        query = query.where(Budget.user_id == user_id)
    if dataset_id is not None:
        query = query.where(Budget.dataset_id == dataset_id)
    return session.scalars(query).all()
