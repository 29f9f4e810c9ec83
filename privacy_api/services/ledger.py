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
from typing import Any, Protocol

from sqlalchemy import BigInteger, Connection, Row, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from mechanisms.accounting import PrivacyEvent, PrivacySpent, total_spent

from ..errors import BudgetExhausted, NotFound
from ..models import Budget, Dataset, LedgerEntry, User, utcnow
from ..units import delta_units, delta_value, eps_units, eps_value
from .release import QueryCost


class LedgerPlan(Protocol):
    """What the ledger records of a query: a QueryPlan, or a SQL statement's several plans."""

    @property
    def aggregate(self) -> str: ...

    def canonical(self) -> dict[str, Any]: ...


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


def pure_increment(cost: QueryCost) -> tuple[int, int] | None:
    """What a query without Gaussian noise adds to the composed spend, exactly its (epsilon,
    delta) in integer units (both valid bounds, basic and RDP, grow by that much); None for a
    query with Gaussian noise, which needs recomposing."""
    if any(e.noise_multiplier is not None for e in cost.events):
        return None
    return (sum(eps_units(e.epsilon * e.count) for e in cost.events),
            sum(delta_units(e.delta * e.count) for e in cost.events))


def composed_spend(session: Session, user_id: int, dataset_id: int, delta_budget: Decimal,
                   extra: QueryCost | None = None, *,
                   at_least: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """Composed (epsilon, delta) of the budget's charged queries plus `extra`, in integer units.

    `at_least` is what is already charged. A query without Gaussian noise adds its
    `pure_increment` to that, so the cost stays O(1) however long the ledger is. A Gaussian
    query recomposes the budget's Gaussian history with RDP (its bound is far below the sum of
    the parts), with every other query summed in SQL.
    """
    increment = pure_increment(extra) if extra is not None else None
    if increment is not None:
        return at_least[0] + increment[0], at_least[1] + increment[1]
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
           plan: LedgerPlan, fingerprint: str, mechanism: str, cost: QueryCost, *,
           sql_token: bytes | None = None) -> Charge:
    """Append a charged ledger entry, or raise BudgetExhausted and change nothing.

    `sql_token`: the statement's text (encrypted under the dataset key) when it came as SQL."""
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
        privacy_events=events_to_json(cost.events), sql_token=sql_token,
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


# The hot path's statements are built once: composing and cache-keying a statement costs more
# than running it on SQLite. Parameters are bound per call.
_CAPPED = (select(Dataset.id)
           .where(Dataset.id == bindparam("p_dataset_id"),
                  or_(Dataset.epsilon_cap.is_not(None), Dataset.delta_cap.is_not(None)))
           .exists())
_CHARGE_IF_FITS = (
    update(Budget)
    .where(Budget.user_id == bindparam("p_user_id"), Budget.dataset_id == bindparam("p_dataset_id"),
           Budget.frozen.is_(False),
           Budget.epsilon_spent + bindparam("p_inc_eps", type_=BigInteger) <= Budget.epsilon_total,
           Budget.delta_spent + bindparam("p_inc_delta", type_=BigInteger) <= Budget.delta_total,
           ~_CAPPED)
    .values(epsilon_spent=Budget.epsilon_spent + bindparam("p_inc_eps", type_=BigInteger),
            delta_spent=Budget.delta_spent + bindparam("p_inc_delta", type_=BigInteger),
            queries=Budget.queries + 1, updated_at=bindparam("p_now"))
    .returning(Budget.epsilon_total - Budget.epsilon_spent,
               Budget.delta_total - Budget.delta_spent)
)
_ADD_TO_DATASET = (
    update(Dataset).where(Dataset.id == bindparam("p_dataset_id"))
    .values(epsilon_spent=Dataset.epsilon_spent + bindparam("p_inc_eps", type_=BigInteger),
            delta_spent=Dataset.delta_spent + bindparam("p_inc_delta", type_=BigInteger))
)
_INSERT_ENTRY = insert(LedgerEntry)


def _insert_entry(conn: Connection, **values: Any) -> str:
    """INSERT one ledger row under a new id; every column is given (the optional ones as None)
    so that all inserts share one compiled statement."""
    entry_id = str(uuid.uuid4())
    conn.execute(_INSERT_ENTRY, {"replay_of": None, "answer_token": None, "federation_id": None,
                                 "round_id": None, "sql_token": None, **values, "id": entry_id})
    return entry_id


def quick_charge(conn: Connection, user_id: int, dataset_id: int, dataset_version: int,
                 plan: LedgerPlan, fingerprint: str, mechanism: str, cost: QueryCost, *,
                 sql_token: bytes | None = None) -> Charge | None:
    """The common charge in three statements, or None when it needs `charge`'s full path.

    A query without Gaussian noise adds exactly its (epsilon, delta) to the spend (see
    `composed_spend`), so the check and the update are one conditional UPDATE: atomic on both
    databases (PostgreSQL re-checks the condition against the newest row version when two
    charges race; SQLite runs it under BEGIN IMMEDIATE). It applies only when the budget is
    not frozen, the query fits, and the dataset has no shared cap; anything else (Gaussian
    recomposition, caps, a refusal with its details) returns None and the caller runs `charge`
    in a fresh transaction, which decides exactly as before.
    """
    increment = pure_increment(cost)
    if increment is None:
        return None
    inc_eps, inc_delta = increment
    params = {"p_user_id": user_id, "p_dataset_id": dataset_id, "p_inc_eps": inc_eps,
              "p_inc_delta": inc_delta}
    left = conn.execute(_CHARGE_IF_FITS, {**params, "p_now": utcnow()}).first()
    if left is None:
        return None
    entry_id = _insert_entry(
        conn, user_id=user_id, dataset_id=dataset_id, dataset_version=dataset_version,
        fingerprint=fingerprint, aggregate=plan.aggregate, plan=plan.canonical(),
        mechanism=mechanism, epsilon_requested=eps_units(cost.epsilon),
        delta_requested=delta_units(cost.delta), epsilon_charged=inc_eps,
        delta_charged=inc_delta, privacy_events=events_to_json(cost.events), sql_token=sql_token)
    conn.execute(_ADD_TO_DATASET, params)
    return Charge(entry_id, eps_value(inc_eps), delta_value(inc_delta),
                  eps_value(left[0]), delta_value(left[1]))


REPLAY_COLUMNS = (LedgerEntry.id, LedgerEntry.answer_token, LedgerEntry.dataset_version,
                  LedgerEntry.fingerprint, LedgerEntry.aggregate, LedgerEntry.plan,
                  LedgerEntry.mechanism, LedgerEntry.epsilon_requested,
                  LedgerEntry.delta_requested)


_FIND_REPLAY = (
    select(*REPLAY_COLUMNS)
    .where(LedgerEntry.user_id == bindparam("p_user_id"),
           LedgerEntry.dataset_id == bindparam("p_dataset_id"),
           LedgerEntry.dataset_version == bindparam("p_version"),
           LedgerEntry.fingerprint == bindparam("p_fingerprint"), LedgerEntry.replay_of.is_(None),
           LedgerEntry.answer_token.is_not(None))
    .order_by(LedgerEntry.created_at).limit(1)
)
_STORE_ANSWER = (update(LedgerEntry).where(LedgerEntry.id == bindparam("p_entry_id"))
                 .values(answer_token=bindparam("p_token")))
_STORE_ANSWER_AND_VERSION = _STORE_ANSWER.values(dataset_version=bindparam("p_version"))


def find_replay(conn: Connection, user_id: int, dataset_id: int, dataset_version: int,
                fingerprint: str) -> Row[Any] | None:
    """The first answered, charged entry of this exact query on this version (REPLAY_COLUMNS)."""
    return conn.execute(_FIND_REPLAY, {"p_user_id": user_id, "p_dataset_id": dataset_id,
                                       "p_version": dataset_version,
                                       "p_fingerprint": fingerprint}).first()


def record_replay(conn: Connection, user_id: int, dataset_id: int, original: Row[Any], *,
                  sql_token: bytes | None = None) -> str:
    """Log that a stored answer was served again; it costs nothing. Returns the entry id."""
    return _insert_entry(
        conn, user_id=user_id, dataset_id=dataset_id, dataset_version=original.dataset_version,
        fingerprint=original.fingerprint, aggregate=original.aggregate, plan=original.plan,
        mechanism=original.mechanism, epsilon_requested=original.epsilon_requested,
        delta_requested=original.delta_requested, epsilon_charged=0, delta_charged=0,
        privacy_events=[], replay_of=original.id, sql_token=sql_token)


def store_answer(conn: Connection, entry_id: str, token: bytes,
                 computed_on_version: int | None = None) -> None:
    if computed_on_version is None:
        conn.execute(_STORE_ANSWER, {"p_entry_id": entry_id, "p_token": token})
    else:  # an upload landed between charge and compute
        conn.execute(_STORE_ANSWER_AND_VERSION,
                     {"p_entry_id": entry_id, "p_token": token, "p_version": computed_on_version})
