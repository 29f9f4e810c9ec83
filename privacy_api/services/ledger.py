"""The budget ledger: charge before release, exactly, under a row lock.

`charge` runs in its own short transaction (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE
on PostgreSQL): lock the dataset and budget rows, compute what the new query adds to the
composed spend (from the composition kept on the budget row: O(1) in the ledger's length),
refuse if any cap would be exceeded, append the ledger entry, update the spent columns and the
composition, commit. Only after that commit does the caller compute the noisy answer, so a
crash can lose an answer but never a charge, and concurrent charges can never overspend.

The same lock orders the budget's hash chain (privacy_api/domain/ledger_chain.py): the chain's head
is read, the new entry hashed over it and the head moved on, in the transaction that charges.
A budget whose renewal period is over starts its next period in that transaction too, before
the charge is checked against the period limit and the lifetime cap.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import BigInteger, Connection, Row, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from mechanisms.accounting import (
    Composition,
    PrivacyEvent,
    PrivacySpent,
    add_rho,
    gaussian_rho,
)

from ..domain import ledger_chain
from ..domain.errors import BudgetExhausted, NotFound
from ..domain.renewal import as_utc, period_end, period_start
from ..domain.units import delta_units, delta_value, eps_units, eps_value
from ..storage.models import Budget, Dataset, LedgerEntry, User, utcnow
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
    query with Gaussian noise, which needs the RDP conversion."""
    if any(e.noise_multiplier is not None for e in cost.events):
        return None
    return (sum(eps_units(e.epsilon * e.count) for e in cost.events),
            sum(delta_units(e.delta * e.count) for e in cost.events))


@dataclass(frozen=True)
class StoredComposition:
    """A budget's `mechanisms.Composition` as its row stores it: sums in integer units, each
    event's share rounded up (so the stored sums are never below the exact ones), and the
    Gaussian events' RDP slope rho as an exact decimal. Every charge adds its events in the
    same transaction, so accounting never reads the ledger."""

    basic_epsilon: int = 0
    basic_delta: int = 0
    pure_epsilon: int = 0
    pure_delta: int = 0
    gaussian_rho: Decimal = Decimal(0)

    @classmethod
    def of(cls, budget: Budget | None) -> StoredComposition:
        if budget is None:
            return cls()
        return cls(budget.basic_epsilon, budget.basic_delta, budget.pure_epsilon,
                   budget.pure_delta, Decimal(budget.gaussian_rho))

    def plus(self, events: Iterable[PrivacyEvent]) -> StoredComposition:
        basic_e, basic_d, pure_e, pure_d = (self.basic_epsilon, self.basic_delta,
                                            self.pure_epsilon, self.pure_delta)
        rho = self.gaussian_rho
        for e in events:
            eps, delta = eps_units(e.epsilon * e.count), delta_units(e.delta * e.count)
            basic_e, basic_d = basic_e + eps, basic_d + delta
            if e.noise_multiplier is None:
                pure_e, pure_d = pure_e + eps, pure_d + delta
            else:
                rho = add_rho(rho, gaussian_rho(e))
        return StoredComposition(basic_e, basic_d, pure_e, pure_d, rho)

    def spent(self, delta_budget: Decimal, at_least: tuple[int, int]) -> tuple[int, int]:
        """The composed (epsilon, delta) in integer units (rounded up), never below `at_least`."""
        composition = Composition(eps_value(self.basic_epsilon), delta_value(self.basic_delta),
                                  eps_value(self.pure_epsilon), delta_value(self.pure_delta),
                                  self.gaussian_rho)
        floor = PrivacySpent(eps_value(at_least[0]), delta_value(at_least[1]))
        total = composition.spent(delta_budget=delta_budget, at_least=floor)
        return eps_units(total.epsilon), delta_units(total.delta)

    def store(self, budget: Budget) -> None:
        budget.basic_epsilon, budget.basic_delta = self.basic_epsilon, self.basic_delta
        budget.pure_epsilon, budget.pure_delta = self.pure_epsilon, self.pure_delta
        budget.gaussian_rho = str(self.gaussian_rho)


def composed_spend(stored: StoredComposition, delta_budget: Decimal, extra: QueryCost, *,
                   at_least: tuple[int, int] = (0, 0)) -> tuple[StoredComposition, tuple[int, int]]:
    """The budget's composition with `extra` added, and its composed (epsilon, delta) in units.

    O(1) in the length of the ledger: `stored` holds everything the bounds need. `at_least` is
    what is already charged. A query without Gaussian noise adds its `pure_increment` to that;
    a Gaussian one converts the composed RDP curve (O(number of RDP orders)).
    """
    after = stored.plus(extra.events)
    increment = pure_increment(extra)
    if increment is not None:
        return after, (at_least[0] + increment[0], at_least[1] + increment[1])
    return after, after.spent(delta_budget, at_least)


def sealed(values: dict[str, Any], chain: str, seq: int, prev_hash: str) -> dict[str, Any]:
    """A ledger row's column values with its place in the chain and its hash added.

    `values` holds every hashed column (id, user_id, ..., period, replay_of, round_id,
    created_at); the caller holds the lock of the chain's budget row."""
    body = ledger_chain.payload(
        chain=chain, seq=seq, prev_hash=prev_hash, id=values["id"], user_id=values["user_id"],
        fingerprint=values["fingerprint"], aggregate=values["aggregate"],
        mechanism=values["mechanism"], epsilon_requested=values["epsilon_requested"],
        delta_requested=values["delta_requested"], epsilon_charged=values["epsilon_charged"],
        delta_charged=values["delta_charged"], events=values["privacy_events"],
        period=values["period"], replay_of=values.get("replay_of"),
        round_id=values.get("round_id"), created_at=values["created_at"])
    return {**values, "chain_seq": seq, "prev_hash": prev_hash,
            "entry_hash": ledger_chain.entry_hash(body)}


def roll_period(budget: Budget, now: dt.datetime) -> bool:
    """Start the budget's next renewal period if the current one is over (the caller holds the
    budget row's lock). The period's spend and composition restart at 0; the lifetime sums
    keep growing. Returns whether it rolled."""
    if (budget.renewal_period is None or budget.period_ends_at is None
            or as_utc(now) < as_utc(budget.period_ends_at)):
        return False
    start = period_start(budget.renewal_period, now)
    budget.period += 1
    budget.period_start, budget.period_ends_at = start, period_end(budget.renewal_period, start)
    budget.epsilon_spent = budget.delta_spent = 0
    StoredComposition().store(budget)
    return True


def _remaining(budget: Budget) -> tuple[int, int]:
    """What the budget still allows, in units: the period's remainder, or less under a lifetime
    cap."""
    eps = budget.epsilon_total - budget.epsilon_spent
    delta = budget.delta_total - budget.delta_spent
    if budget.lifetime_epsilon_cap is not None:
        eps = min(eps, budget.lifetime_epsilon_cap - budget.lifetime_epsilon_spent)
    if budget.lifetime_delta_cap is not None:
        delta = min(delta, budget.lifetime_delta_cap - budget.lifetime_delta_spent)
    return max(0, eps), max(0, delta)


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
           sql_token: bytes | None = None, now: dt.datetime | None = None) -> Charge:
    """Append a charged ledger entry, or raise BudgetExhausted and change nothing.

    `sql_token`: the statement's text (encrypted under the dataset key) when it came as SQL.
    `now`: the service's clock (AppState.clock), which decides the renewal period."""
    now = now or utcnow()
    dataset, budget = lock_budget(session, user, dataset_id)
    if budget.frozen:
        raise BudgetExhausted("this budget is frozen by an admin", {"frozen": True})
    roll_period(budget, now)
    composition, (new_eps, new_delta) = composed_spend(
        StoredComposition.of(budget), delta_value(budget.delta_total), cost,
        at_least=(budget.epsilon_spent, budget.delta_spent))
    inc_eps, inc_delta = new_eps - budget.epsilon_spent, new_delta - budget.delta_spent
    needed = {"epsilon_needed": float(eps_value(inc_eps)),
              "delta_needed": float(delta_value(inc_delta))}
    if new_eps > budget.epsilon_total or new_delta > budget.delta_total:
        period = ({"period_ends_at": as_utc(budget.period_ends_at).isoformat()}
                  if budget.period_ends_at is not None else {})
        raise BudgetExhausted(
            "this query would exceed your privacy budget"
            f"{' for this period' if period else ''}; nothing was charged",
            {"limit": "period",
             "epsilon_remaining": float(eps_value(budget.epsilon_total - budget.epsilon_spent)),
             "delta_remaining": float(delta_value(budget.delta_total - budget.delta_spent)),
             **needed, **period},
        )
    eps_cap, delta_cap = budget.lifetime_epsilon_cap, budget.lifetime_delta_cap
    if ((eps_cap is not None and budget.lifetime_epsilon_spent + inc_eps > eps_cap)
            or (delta_cap is not None and budget.lifetime_delta_spent + inc_delta > delta_cap)):
        raise BudgetExhausted(
            "this query would exceed your lifetime privacy budget; nothing was charged",
            {"limit": "lifetime",
             "lifetime_epsilon_remaining": (None if eps_cap is None else float(
                 eps_value(eps_cap - budget.lifetime_epsilon_spent))),
             "lifetime_delta_remaining": (None if delta_cap is None else float(
                 delta_value(delta_cap - budget.lifetime_delta_spent))),
             **needed},
        )
    if dataset.epsilon_cap is not None and dataset.epsilon_spent + inc_eps > dataset.epsilon_cap:
        raise BudgetExhausted("the dataset's total privacy budget is exhausted", {"dataset_cap": True})
    if dataset.delta_cap is not None and dataset.delta_spent + inc_delta > dataset.delta_cap:
        raise BudgetExhausted("the dataset's total delta budget is exhausted", {"dataset_cap": True})
    seq = budget.ledger_count + 1
    entry = LedgerEntry(**sealed(dict(
        id=str(uuid.uuid4()), user_id=user.id, dataset_id=dataset_id,
        dataset_version=dataset_version, fingerprint=fingerprint, aggregate=plan.aggregate,
        plan=plan.canonical(), mechanism=mechanism,
        epsilon_requested=eps_units(cost.epsilon), delta_requested=delta_units(cost.delta),
        epsilon_charged=inc_eps, delta_charged=inc_delta,
        privacy_events=events_to_json(cost.events), sql_token=sql_token,
        period=budget.period, created_at=now,
    ), ledger_chain.budget_chain(user.id, dataset_id), seq, budget.ledger_head))
    session.add(entry)
    budget.epsilon_spent, budget.delta_spent = new_eps, new_delta
    budget.lifetime_epsilon_spent += inc_eps
    budget.lifetime_delta_spent += inc_delta
    budget.ledger_count, budget.ledger_head = seq, entry.entry_hash
    composition.store(budget)
    budget.queries += 1
    if dataset.epsilon_cap is not None or dataset.delta_cap is not None:
        dataset.epsilon_spent += inc_eps
        dataset.delta_spent += inc_delta
    else:  # no row lock held: an atomic increment keeps the running total exact
        session.execute(update(Dataset).where(Dataset.id == dataset_id).values(
            epsilon_spent=Dataset.epsilon_spent + inc_eps,
            delta_spent=Dataset.delta_spent + inc_delta))
    session.flush()
    eps_left, delta_left = _remaining(budget)
    return Charge(entry.id, eps_value(inc_eps), delta_value(inc_delta),
                  eps_value(eps_left), delta_value(delta_left))


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
           # the current renewal period is not over (else `charge` rolls it first)
           or_(Budget.period_ends_at.is_(None), Budget.period_ends_at > bindparam("p_now")),
           or_(Budget.lifetime_epsilon_cap.is_(None),
               Budget.lifetime_epsilon_spent + bindparam("p_inc_eps", type_=BigInteger)
               <= Budget.lifetime_epsilon_cap),
           or_(Budget.lifetime_delta_cap.is_(None),
               Budget.lifetime_delta_spent + bindparam("p_inc_delta", type_=BigInteger)
               <= Budget.lifetime_delta_cap),
           ~_CAPPED)
    .values(epsilon_spent=Budget.epsilon_spent + bindparam("p_inc_eps", type_=BigInteger),
            delta_spent=Budget.delta_spent + bindparam("p_inc_delta", type_=BigInteger),
            # the composition's sums grow by the same units (a pure query: see pure_increment)
            basic_epsilon=Budget.basic_epsilon + bindparam("p_inc_eps", type_=BigInteger),
            basic_delta=Budget.basic_delta + bindparam("p_inc_delta", type_=BigInteger),
            pure_epsilon=Budget.pure_epsilon + bindparam("p_inc_eps", type_=BigInteger),
            pure_delta=Budget.pure_delta + bindparam("p_inc_delta", type_=BigInteger),
            lifetime_epsilon_spent=(Budget.lifetime_epsilon_spent
                                    + bindparam("p_inc_eps", type_=BigInteger)),
            lifetime_delta_spent=(Budget.lifetime_delta_spent
                                  + bindparam("p_inc_delta", type_=BigInteger)),
            # this UPDATE holds the row lock until commit: the head it returns is the chain's
            # newest, and _MOVE_HEAD moves it on in the same transaction
            ledger_count=Budget.ledger_count + 1,
            queries=Budget.queries + 1, updated_at=bindparam("p_now"))
    .returning(Budget.epsilon_total - Budget.epsilon_spent,
               Budget.delta_total - Budget.delta_spent,
               Budget.lifetime_epsilon_cap - Budget.lifetime_epsilon_spent,
               Budget.lifetime_delta_cap - Budget.lifetime_delta_spent,
               Budget.id, Budget.ledger_count, Budget.ledger_head, Budget.period)
)
# A replay charges nothing but is an entry of the chain: it takes the row lock the same way.
_CLAIM_SEQ = (
    update(Budget)
    .where(Budget.user_id == bindparam("p_user_id"), Budget.dataset_id == bindparam("p_dataset_id"))
    .values(ledger_count=Budget.ledger_count + 1)
    .returning(Budget.id, Budget.ledger_count, Budget.ledger_head, Budget.period)
)
_MOVE_HEAD = (update(Budget).where(Budget.id == bindparam("p_budget_id"))
              .values(ledger_head=bindparam("p_head")))
_ADD_TO_DATASET = (
    update(Dataset).where(Dataset.id == bindparam("p_dataset_id"))
    .values(epsilon_spent=Dataset.epsilon_spent + bindparam("p_inc_eps", type_=BigInteger),
            delta_spent=Dataset.delta_spent + bindparam("p_inc_delta", type_=BigInteger))
)
_INSERT_ENTRY = insert(LedgerEntry)


def _insert_entry(conn: Connection, claimed: Sequence[Any], now: dt.datetime, **values: Any) -> str:
    """INSERT one ledger row under a new id, chained after the head `claimed` returned (budget
    id, new count, old head, period) and move the head; every column is given (the optional
    ones as None) so that all inserts share one compiled statement."""
    budget_id, seq, head, period = claimed[-4:]
    row = sealed({"replay_of": None, "answer_token": None, "federation_id": None,
                  "round_id": None, "sql_token": None, **values, "id": str(uuid.uuid4()),
                  "period": period, "created_at": now},
                 ledger_chain.budget_chain(values["user_id"], values["dataset_id"]), seq, head)
    conn.execute(_INSERT_ENTRY, row)
    conn.execute(_MOVE_HEAD, {"p_budget_id": budget_id, "p_head": row["entry_hash"]})
    return str(row["id"])


def quick_charge(conn: Connection, user_id: int, dataset_id: int, dataset_version: int,
                 plan: LedgerPlan, fingerprint: str, mechanism: str, cost: QueryCost, *,
                 sql_token: bytes | None = None, now: dt.datetime | None = None
                 ) -> Charge | None:
    """The common charge in three statements, or None when it needs `charge`'s full path.

    A query without Gaussian noise adds exactly its (epsilon, delta) to the spend (see
    `composed_spend`), so the check and the update are one conditional UPDATE: atomic on both
    databases (PostgreSQL re-checks the condition against the newest row version when two
    charges race; SQLite runs it under BEGIN IMMEDIATE). It applies only when the budget is
    not frozen, its renewal period is not over, the query fits (period limit and lifetime
    cap), and the dataset has no shared cap; anything else (Gaussian recomposition, caps, a
    period to roll, a refusal with its details) returns None and the caller runs `charge` in a
    fresh transaction, which decides exactly as before.
    """
    now = now or utcnow()
    increment = pure_increment(cost)
    if increment is None:
        return None
    inc_eps, inc_delta = increment
    params = {"p_user_id": user_id, "p_dataset_id": dataset_id, "p_inc_eps": inc_eps,
              "p_inc_delta": inc_delta}
    left = conn.execute(_CHARGE_IF_FITS, {**params, "p_now": now}).first()
    if left is None:
        return None
    entry_id = _insert_entry(
        conn, left, now, user_id=user_id, dataset_id=dataset_id, dataset_version=dataset_version,
        fingerprint=fingerprint, aggregate=plan.aggregate, plan=plan.canonical(),
        mechanism=mechanism, epsilon_requested=eps_units(cost.epsilon),
        delta_requested=delta_units(cost.delta), epsilon_charged=inc_eps,
        delta_charged=inc_delta, privacy_events=events_to_json(cost.events), sql_token=sql_token)
    conn.execute(_ADD_TO_DATASET, params)
    eps_left = left[0] if left[2] is None else min(left[0], left[2])
    delta_left = left[1] if left[3] is None else min(left[1], left[3])
    return Charge(entry_id, eps_value(inc_eps), delta_value(inc_delta),
                  eps_value(eps_left), delta_value(delta_left))


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
                  sql_token: bytes | None = None, now: dt.datetime | None = None) -> str:
    """Log that a stored answer was served again; it costs nothing, but it is an entry of the
    budget's chain (run it in a write transaction: it takes the budget row's lock). Returns
    the entry id."""
    claimed = conn.execute(_CLAIM_SEQ, {"p_user_id": user_id, "p_dataset_id": dataset_id}).first()
    if claimed is None:  # the budget went away between lookup and replay
        raise NotFound("no such dataset")
    return _insert_entry(
        conn, claimed, now or utcnow(), user_id=user_id, dataset_id=dataset_id,
        dataset_version=original.dataset_version,
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
