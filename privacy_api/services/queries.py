"""Answer an analyst's query: plan, charge (committed), compute, store, release.

The order is the privacy argument: the ledger entry is committed before any noise is drawn,
and the answer leaves the process only after that. A repeat of the same query on the same
dataset version returns the stored (encrypted) answer and charges nothing, so repeating a
query cannot average the noise away.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.orm import Session

from ..domain.errors import InvalidRequest, NotFound
from ..domain.units import delta_value, eps_value
from ..storage.dataset_schema import DatasetSchema
from ..storage.models import Budget, Dataset, LedgerEntry, User
from . import ledger
from .datasets import data_cipher, get_visible_dataset, schema_of
from .non_finite import refuse_non_finite
from .query_plan import build_plan, fingerprint
from .query_resources import QueryResources
from .release import estimate_accuracy, query_cost, release_answer


def refuse_stray_dummy_fields(spec: dict[str, Any]) -> None:
    """dummy_rows/dummy_seed on a real query: the analyst meant to explore, so refuse rather
    than charge for a query on the real data."""
    if not spec.get("dummy") and (spec.get("dummy_rows") is not None
                                  or spec.get("dummy_seed") is not None):
        raise InvalidRequest("dummy_rows and dummy_seed apply only with dummy: true; nothing "
                             "was charged", {"dummy": ["must be true when dummy_rows or "
                                                       "dummy_seed is given"]})


def _privacy_params(st: QueryResources, spec: dict[str, Any]) -> tuple[str, Decimal, Decimal]:
    refuse_stray_dummy_fields(spec)
    mechanism: str = spec.get("mechanism") or "laplace"
    eps: Decimal = spec["epsilon"]
    delta: Decimal = spec["delta"] if spec.get("delta") is not None else Decimal(0)
    errors: dict[str, list[str]] = {}
    if not eps.is_finite() or eps <= 0:
        errors["epsilon"] = ["must be a finite number > 0"]
    elif eps > st.max_query_epsilon:
        errors["epsilon"] = [f"at most {st.max_query_epsilon} per query on this service"]
    if not delta.is_finite() or delta < 0 or delta >= 1:
        errors["delta"] = ["must satisfy 0 <= delta < 1"]
    elif mechanism == "gaussian" and delta == 0:
        errors["delta"] = ["the Gaussian mechanism needs 0 < delta < 1"]
    elif mechanism == "laplace" and delta != 0:
        errors["delta"] = ["the Laplace mechanism is pure epsilon-DP: leave delta out"]
    elif delta > Decimal("0.001"):
        errors["delta"] = ["delta above 1e-3 protects nobody; use a smaller delta"]
    if errors:
        raise InvalidRequest("invalid privacy parameters", errors)
    # normalise so that 0.1 and 0.10 are the same query for replay
    return mechanism, eps.normalize(), delta.normalize()


_LOAD_TARGET = (
    select(Dataset.version, Dataset.columns, Dataset.privacy_unit_column,
           Dataset.privacy_unit_max_rows,
           (Budget.epsilon_total - Budget.epsilon_spent).label("eps_left"),
           (Budget.delta_total - Budget.delta_spent).label("delta_left"))
    .join(Budget, Budget.dataset_id == Dataset.id)
    .where(Dataset.id == bindparam("dataset_id"), Dataset.deleted_at.is_(None),
           Budget.user_id == bindparam("user_id"))
)


def _load_target(conn: Connection, user_id: int, dataset_id: int) -> Row[Any]:
    """The dataset as this analyst sees it, and what is left of the analyst's budget on it.

    Only analysts query, and an analyst sees a dataset exactly when holding a budget on it."""
    row = conn.execute(_LOAD_TARGET, {"dataset_id": dataset_id, "user_id": user_id}).first()
    if row is None:
        raise NotFound("no such dataset")
    return row


def run_query(st: QueryResources, user: User, dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    mechanism, eps, delta = _privacy_params(st, spec)
    db = st.db
    # Plan and look for a replay without taking the write lock: replays are the common case
    # of a dashboard refreshing, and must not queue behind charges. Core statements, not the
    # ORM: this path runs on every query and its statements are most of its latency.
    with db.core_transaction() as conn:
        target = _load_target(conn, user.id, dataset_id)
        schema = DatasetSchema.from_model(target.columns, target.privacy_unit_column,
                                          target.privacy_unit_max_rows)
        plan = build_plan(schema, spec)
        cost = query_cost(plan, schema, mechanism=mechanism, epsilon=eps, delta=delta)
        fp = fingerprint(plan, mechanism, str(eps), str(delta))
        version: int = target.version
        original = ledger.find_replay(conn, user.id, dataset_id, version, fp)
        cipher = data_cipher(conn, st.keyring, dataset_id)
    if original is not None:
        stored = orjson.loads(cipher.decrypt(original.answer_token))
        with db.core_transaction(immediate=True) as conn:
            replay_id = ledger.record_replay(conn, user.id, dataset_id, original, now=st.clock())
        return _response(replay_id, stored, Decimal(0), Decimal(0), True,
                         eps_value(target.eps_left), delta_value(target.delta_left))

    # Two identical queries racing here are both charged and both answered: each answer is
    # paid for, so nothing leaks; only later repeats are replays.
    with db.core_transaction(immediate=True) as conn:
        charged = ledger.quick_charge(conn, user.id, dataset_id, version, plan, fp, mechanism, cost,
                                      now=st.clock())
    if charged is None:  # Gaussian, capped dataset, frozen or exhausted: the full path decides
        with db.transaction(immediate=True) as session:
            charged = ledger.charge(session, user, dataset_id, version, plan, fp, mechanism, cost,
                                    now=st.clock())

    # The charge is committed. From here on a failure loses the answer, never the charge.
    data = st.cache.peek(dataset_id, version)
    if data is None:  # cold: load the newest version (an upload may have landed meanwhile)
        with db.sessions() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            data = st.columns_for(session, dataset, cipher)
    answer = release_answer(plan, data, mechanism=mechanism, epsilon=eps, delta=delta)
    refuse_non_finite(answer)  # orjson would store NaN as null: a bug must not become an answer
    token = cipher.encrypt(orjson.dumps(answer))
    with db.core_transaction() as conn:
        ledger.store_answer(conn, charged.entry_id, token,
                            data.version if data.version != version else None)
    return _response(charged.entry_id, answer, charged.epsilon_charged, charged.delta_charged,
                     False, charged.epsilon_remaining, charged.delta_remaining)


def _response(query_id: str | None, answer: dict[str, Any], eps: Decimal, delta: Decimal, replayed: bool,
              eps_left: Decimal, delta_left: Decimal) -> dict[str, Any]:
    return {
        "query_id": query_id,
        "result": answer["result"],
        "accuracy": answer["accuracy"],
        "epsilon_spent": float(eps),
        "delta_spent": float(delta),
        "replayed": replayed,
        "budget": {"epsilon_remaining": float(eps_left), "delta_remaining": float(delta_left)},
    }


def estimate_query(st: QueryResources, session: Session, user: User, dataset_id: int,
                   spec: dict[str, Any]) -> dict[str, Any]:
    """Cost and expected accuracy from public parameters only: no data read, nothing spent."""
    mechanism, eps, delta = _privacy_params(st, spec)
    dataset = get_visible_dataset(session, user, dataset_id)
    schema = schema_of(dataset)
    plan = build_plan(schema, spec)
    cost = query_cost(plan, schema, mechanism=mechanism, epsilon=eps, delta=delta)
    budget = session.scalar(select(Budget).where(Budget.user_id == user.id,
                                                 Budget.dataset_id == dataset_id))
    eps_before, delta_before = (budget.epsilon_spent, budget.delta_spent) if budget else (0, 0)
    delta_total = delta_value(budget.delta_total) if budget else Decimal(0)
    _, (new_eps, new_delta) = ledger.composed_spend(
        ledger.StoredComposition.of(budget), delta_total, cost, at_least=(eps_before, delta_before))
    return {
        "epsilon": float(eps_value(max(0, new_eps - eps_before))),
        "delta": float(delta_value(max(0, new_delta - delta_before))),
        "accuracy": estimate_accuracy(plan, schema, mechanism=mechanism, epsilon=eps, delta=delta),
    }


def list_ledger(session: Session, user: User, *, dataset_id: int | None, page: int,
                per_page: int) -> list[dict[str, Any]]:
    query = select(LedgerEntry).order_by(LedgerEntry.created_at.desc(), LedgerEntry.id)
    if user.role != "admin":
        query = query.where(LedgerEntry.user_id == user.id)
    if dataset_id is not None:
        query = query.where(LedgerEntry.dataset_id == dataset_id)
    rows = session.scalars(query.offset((page - 1) * per_page).limit(per_page)).all()
    return [
        {"query_id": e.id, "user_id": e.user_id, "dataset_id": e.dataset_id,
         "dataset_version": e.dataset_version, "aggregate": e.aggregate, "plan": e.plan,
         "mechanism": e.mechanism, "epsilon": float(eps_value(e.epsilon_requested)),
         "delta": float(delta_value(e.delta_requested)),
         "epsilon_charged": float(eps_value(e.epsilon_charged)),
         "delta_charged": float(delta_value(e.delta_charged)),
         "replayed": e.replay_of is not None,
         "answered": e.answer_token is not None or e.replay_of is not None,
         "created_at": e.created_at}
        for e in rows
    ]
