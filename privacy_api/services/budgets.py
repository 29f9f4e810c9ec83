"""Per-(analyst, dataset) privacy budgets set by admins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound
from ..models import Budget, Dataset, User
from ..units import delta_units, delta_value, eps_units, eps_value
from .audit import record_action

# The default of Settings.max_budget_delta (privacy_api/config.py).
DEFAULT_MAX_BUDGET_DELTA = Decimal("1e-3")


@dataclass(frozen=True)
class BudgetView:
    user_id: int
    dataset_id: int
    epsilon_total: Decimal
    delta_total: Decimal
    epsilon_spent: Decimal
    delta_spent: Decimal
    queries: int
    frozen: bool

    @property
    def epsilon_remaining(self) -> Decimal:
        return max(Decimal(0), self.epsilon_total - self.epsilon_spent)

    @property
    def delta_remaining(self) -> Decimal:
        return max(Decimal(0), self.delta_total - self.delta_spent)

    @classmethod
    def of(cls, b: Budget) -> BudgetView:
        return cls(b.user_id, b.dataset_id, eps_value(b.epsilon_total), delta_value(b.delta_total),
                   eps_value(b.epsilon_spent), delta_value(b.delta_spent), b.queries, b.frozen)


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
) -> Budget:
    """Grant or change a budget. Never below what is already spent (409); delta at most
    `max_delta` (the service's PRIVACY_API_MAX_BUDGET_DELTA, 422), unless it is the budget's
    current delta (a budget granted under a higher cap can still be frozen or changed in
    epsilon)."""
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
    if budget is None:
        budget = Budget(user_id=user_id, dataset_id=dataset_id, epsilon_total=eps_u,
                        delta_total=delta_u, epsilon_spent=0, delta_spent=0, queries=0,
                        frozen=bool(frozen))
        session.add(budget)
        action = "budget.grant"
    else:
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
    session.flush()
    record_action(session, actor, action, f"budget:{user_id}/{dataset_id}",
                  epsilon=str(eps_value(eps_u)), delta=str(delta_value(delta_u)),
                  frozen=budget.frozen)
    return budget


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
