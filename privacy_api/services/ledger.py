"""The budget ledger: charge before release, exactly, under a row lock.

`charge` runs in its own short transaction (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE
on PostgreSQL): lock the dataset and budget rows, compute what the new query adds to the
composed spend, refuse if any cap would be exceeded, append the ledger entry, update the
spent columns, commit. Only after that commit does the caller compute the noisy answer, so a
crash can lose an answer but never a charge, and concurrent charges can never overspend.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mechanisms.accounting import PrivacyEvent, PrivacySpent, total_spent

from ..errors import BudgetExhausted, NotFound
from ..models import Budget, Dataset, LedgerEntry, User
from ..units import delta_units, delta_value, eps_units, eps_value
from .query_plan import QueryPlan
from .release import QueryCost


@dataclass(frozen=True)
class Charge:
    entry_id: str
    epsilon_charged: Decimal
    delta_charged: Decimal
    epsilon_remaining: Decimal
    delta_remaining: Decimal


def events_to_json(events: tuple[PrivacyEvent, ...]) -> list[list[Any]]:
    return [[str(e.epsilon), str(e.delta), e.noise_multiplier, e.count] for e in events]


def events_from_json(rows: list[list[Any]]) -> list[PrivacyEvent]:
    return [PrivacyEvent(Decimal(e), Decimal(d), noise_multiplier=nm, count=n)
            for e, d, nm, n in rows]


def composed_spend(session: Session, user_id: int, dataset_id: int, delta_budget: Decimal,
                   extra: QueryCost | None = None, *,
                   at_least: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Composed (epsilon, delta) of the budget's charged queries plus `extra`, in integer units.

    `at_least` is what is already charged. A query without Gaussian noise adds exactly its
    (epsilon, delta) to that: both valid bounds (basic and RDP) grow by that much, so nothing
    needs recomposing and the cost stays O(1) however long the ledger is. A Gaussian query
    recomposes the budget's Gaussian history with RDP (its bound is far below the sum of the
    parts), with every other query summed in SQL.
    """
    if extra is not None and all(e.noise_multiplier is None for e in extra.events):
        return (at_least[0] + sum(eps_units(e.epsilon * e.count) for e in extra.events),
                at_least[1] + sum(delta_units(e.delta * e.count) for e in extra.events))
    mine = (LedgerEntry.user_id == user_id, LedgerEntry.dataset_id == dataset_id,
            LedgerEntry.replay_of.is_(None))
    gaussian = session.scalars(
        select(LedgerEntry.privacy_events).where(*mine, LedgerEntry.mechanism == "gaussian")
    ).all()
    events = [ev for rows in gaussian for ev in events_from_json(rows)]
    other_eps, other_delta = session.execute(
        select(func.coalesce(func.sum(LedgerEntry.epsilon_requested), 0),
               func.coalesce(func.sum(LedgerEntry.delta_requested), 0))
        .where(*mine, LedgerEntry.mechanism != "gaussian")
    ).one()
    if other_eps or other_delta:
        events.append(PrivacyEvent(eps_value(other_eps), delta_value(other_delta)))
    if extra is not None:
        events.extend(extra.events)
    if not events:
        return at_least
    floor = PrivacySpent(eps_value(at_least[0]), delta_value(at_least[1]))
    total = total_spent(events, delta_budget=delta_budget, at_least=floor)
    return eps_units(total.epsilon), delta_units(total.delta)


def lock_budget(session: Session, user: User, dataset_id: int) -> tuple[Dataset, Budget]:
    # Lock order everywhere: dataset row, then budget row (no deadlocks on PostgreSQL).
    # The dataset row is locked only when it carries a cap shared by all analysts; otherwise
    # analysts' charges are independent and must not queue behind one another.
    dataset = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.deleted_at.is_(None)))
    if dataset is not None and (dataset.epsilon_cap is not None or dataset.delta_cap is not None):
        dataset = session.scalar(
            select(Dataset).where(Dataset.id == dataset_id).with_for_update()
            .execution_options(populate_existing=True))
    budget = session.scalar(
        select(Budget).where(Budget.user_id == user.id, Budget.dataset_id == dataset_id)
        .with_for_update()
    )
    if dataset is None or budget is None:
        raise NotFound("no such dataset")
    return dataset, budget


def charge(session: Session, user: User, dataset_id: int, dataset_version: int,
           plan: QueryPlan, fingerprint: str, mechanism: str, cost: QueryCost) -> Charge:
    """Append a charged ledger entry, or raise BudgetExhausted and change nothing."""
    dataset, budget = lock_budget(session, user, dataset_id)
    if budget.frozen:
        raise BudgetExhausted("this budget is frozen by an admin", {"frozen": True})
    new_eps, new_delta = composed_spend(session, user.id, dataset_id,
                                        delta_value(budget.delta_total), cost,
                                        at_least=(budget.epsilon_spent, budget.delta_spent))
    inc_eps, inc_delta = new_eps - budget.epsilon_spent, new_delta - budget.delta_spent
    if new_eps > budget.epsilon_total or new_delta > budget.delta_total:
        raise BudgetExhausted(
            "this query would exceed your privacy budget; nothing was charged",
            {"epsilon_remaining": float(eps_value(budget.epsilon_total - budget.epsilon_spent)),
             "delta_remaining": float(delta_value(budget.delta_total - budget.delta_spent)),
             "epsilon_needed": float(eps_value(inc_eps)),
             "delta_needed": float(delta_value(inc_delta))},
        )
    if dataset.epsilon_cap is not None and dataset.epsilon_spent + inc_eps > dataset.epsilon_cap:
        raise BudgetExhausted("the dataset's total privacy budget is exhausted", {"dataset_cap": True})
    if dataset.delta_cap is not None and dataset.delta_spent + inc_delta > dataset.delta_cap:
        raise BudgetExhausted("the dataset's total delta budget is exhausted", {"dataset_cap": True})
    entry = LedgerEntry(
        id=str(uuid.uuid4()), user_id=user.id, dataset_id=dataset_id,
        dataset_version=dataset_version, fingerprint=fingerprint, aggregate=plan.aggregate,
        plan=plan.canonical(), mechanism=mechanism,
        epsilon_requested=eps_units(cost.epsilon), delta_requested=delta_units(cost.delta),
        epsilon_charged=inc_eps, delta_charged=inc_delta,
        privacy_events=events_to_json(cost.events),
    )
    session.add(entry)
    budget.epsilon_spent, budget.delta_spent = new_eps, new_delta
    budget.queries += 1
    if dataset.epsilon_cap is not None or dataset.delta_cap is not None:
        dataset.epsilon_spent += inc_eps
        dataset.delta_spent += inc_delta
    else:  # no row lock held: an atomic increment keeps the running total exact
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(
            epsilon_spent=Dataset.epsilon_spent + inc_eps,
            delta_spent=Dataset.delta_spent + inc_delta))
    session.flush()
    return Charge(entry.id, eps_value(inc_eps), delta_value(inc_delta),
                  eps_value(budget.epsilon_total - new_eps),
                  delta_value(budget.delta_total - new_delta))


def find_replay(session: Session, user_id: int, dataset_id: int, dataset_version: int,
                fingerprint: str) -> LedgerEntry | None:
    return session.scalar(
        select(LedgerEntry)
        .where(LedgerEntry.user_id == user_id, LedgerEntry.dataset_id == dataset_id,
               LedgerEntry.dataset_version == dataset_version,
               LedgerEntry.fingerprint == fingerprint, LedgerEntry.replay_of.is_(None),
               LedgerEntry.answer_token.is_not(None))
        .order_by(LedgerEntry.created_at).limit(1)
    )


def record_replay(session: Session, original: LedgerEntry) -> LedgerEntry:
    """Log that a stored answer was served again; it costs nothing."""
    entry = LedgerEntry(
        id=str(uuid.uuid4()), user_id=original.user_id, dataset_id=original.dataset_id,
        dataset_version=original.dataset_version, fingerprint=original.fingerprint,
        aggregate=original.aggregate, plan=original.plan, mechanism=original.mechanism,
        epsilon_requested=original.epsilon_requested, delta_requested=original.delta_requested,
        epsilon_charged=0, delta_charged=0, replay_of=original.id, privacy_events=[],
    )
    session.add(entry)
    return entry


def remaining(session: Session, user_id: int, dataset_id: int) -> tuple[Decimal, Decimal]:
    budget = session.scalar(
        select(Budget).where(Budget.user_id == user_id, Budget.dataset_id == dataset_id))
    if budget is None:
        return Decimal(0), Decimal(0)
    return (eps_value(budget.epsilon_total - budget.epsilon_spent),
            delta_value(budget.delta_total - budget.delta_spent))
