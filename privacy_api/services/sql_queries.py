"""Answer an analyst's SQL statement: translate, charge once (committed), compute, store, render.

The same order as `queries.run_query`, for the same reason: the statement's whole cost (the
sum of its aggregates' shares) is committed in one ledger entry before any noise is drawn.
A one-aggregate statement *is* its JSON plan: the same fingerprint, the same stored answer,
so the two forms replay each other. A statement of several aggregates is one ledger entry
whose plan lists every part with its share, replayed as a whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select
from sqlalchemy.orm import Session

from ..domain.errors import InvalidRequest, NotFound
from ..domain.units import delta_units, delta_value, eps_units, eps_value
from ..storage.dataset_schema import DatasetSchema
from ..storage.models import Budget, Dataset, User
from . import ledger
from .accuracy_first import check_one_of, parse_target, smallest_epsilon
from .datasets import data_cipher, get_visible_dataset, schema_of
from .non_finite import refuse_non_finite
from .queries import _LOAD_TARGET, _privacy_params
from .query_plan import QueryPlan, fingerprint
from .query_resources import QueryResources
from .release import QueryCost, estimate_accuracy, query_cost, release_answer
from .sql_plan import SelectedAggregate, Statement, parse_statement, split_shares

_LOAD_SQL_TARGET = _LOAD_TARGET.add_columns(Dataset.name)
MIN_WEIGHT, MAX_WEIGHT = Decimal("1e-6"), Decimal("1e6")


@dataclass(frozen=True)
class Part:
    aggregate: SelectedAggregate
    epsilon: Decimal
    delta: Decimal
    cost: QueryCost

    def canonical(self) -> dict[str, Any]:
        return {"plan": self.aggregate.plan.canonical(), "epsilon": str(self.epsilon),
                "delta": str(self.delta)}


@dataclass(frozen=True)
class StatementPlan:
    """The ledger's view of a statement of several aggregates (see ledger.LedgerPlan).

    Its parts are kept in a canonical order (sorted by plan and share), so the same aggregates
    in another SELECT order are the same query for replay; `order[i]` is the position in that
    canonical order of the statement's i-th aggregate."""

    parts: tuple[Part, ...]
    order: tuple[int, ...]

    @property
    def aggregate(self) -> str:
        return "statement"

    def canonical(self) -> dict[str, Any]:
        return {"statement": [p.canonical() for p in self.parts]}


def _shares(statement: Statement, spec: dict[str, Any], eps: Decimal,
            delta: Decimal) -> list[tuple[Decimal, Decimal]]:
    names = [a.name for a in statement.aggregates]
    raw = spec.get("shares")
    if raw is None:
        weights = [Decimal(1)] * len(names)
    else:
        unknown = sorted(set(raw) - set(names))
        missing = [n for n in names if n not in raw]
        # bounded so that the exact split below stays within Decimal's precision
        bad = [k for k, v in raw.items() if not (v.is_finite() and MIN_WEIGHT <= v <= MAX_WEIGHT)]
        if unknown or missing or bad:
            raise InvalidRequest("shares must give every aggregate (by output name) a weight "
                                 f"from {MIN_WEIGHT} to {MAX_WEIGHT}",
                                 {"shares": {"unknown": unknown, "missing": missing,
                                             "out_of_range": bad}})
        weights = [raw[n] for n in names]
    if len(names) == 1:
        return [(eps, delta)]
    eps_parts = split_shares(eps_units(eps), weights)
    delta_parts = split_shares(delta_units(delta), weights) if delta else [0] * len(names)
    if min(eps_parts) == 0:
        raise InvalidRequest("epsilon is too small to split across the statement's aggregates",
                             {"epsilon": ["each aggregate's share must be > 0"]})
    return [(eps_value(e).normalize(), delta_value(d).normalize())
            for e, d in zip(eps_parts, delta_parts, strict=True)]


def _parts(statement: Statement, schema: DatasetSchema, spec: dict[str, Any], mechanism: str,
           eps: Decimal, delta: Decimal) -> list[Part]:
    parts = []
    for agg, (e, d) in zip(statement.aggregates, _shares(statement, spec, eps, delta), strict=True):
        try:
            cost = query_cost(agg.plan, schema, mechanism=mechanism, epsilon=e, delta=d)
        except InvalidRequest as exc:
            raise InvalidRequest(f"{agg.name}: {exc.message}",
                                 {"construct": agg.function, "column": agg.name, **exc.details}
                                 ) from None
        parts.append(Part(agg, e, d, cost))
    return parts


def _ledger_plan(parts: list[Part], mechanism: str) -> tuple[Any, str, QueryCost]:
    """(ledger plan, replay fingerprint, total cost) of a statement's parts."""
    if len(parts) == 1:  # the JSON plan itself: same fingerprint, same stored answer
        p = parts[0]
        return (p.aggregate.plan, fingerprint(p.aggregate.plan, mechanism, str(p.epsilon),
                                              str(p.delta)), p.cost)
    keyed = sorted(range(len(parts)), key=lambda i: orjson.dumps(parts[i].canonical(),
                                                                 option=orjson.OPT_SORT_KEYS))
    ordered = tuple(parts[i] for i in keyed)
    order = tuple(keyed.index(i) for i in range(len(parts)))
    plan = StatementPlan(ordered, order)
    payload = orjson.dumps({"statement": plan.canonical(), "mechanism": mechanism},
                           option=orjson.OPT_SORT_KEYS)
    cost = QueryCost(sum((p.epsilon for p in parts), Decimal(0)),
                     sum((p.delta for p in parts), Decimal(0)),
                     tuple(e for p in parts for e in p.cost.events))
    return plan, hashlib.sha256(payload).hexdigest(), cost


def run_sql(st: QueryResources, user: User, dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    mechanism, eps, delta = _privacy_params(st, spec)
    db = st.db
    with db.core_transaction() as conn:
        target = ledger_target(conn, user.id, dataset_id)
        schema = DatasetSchema.from_model(target.columns, target.privacy_unit_column,
                                          target.privacy_unit_max_rows)
        statement = parse_statement(schema, target.name, spec["sql"])
        parts = _parts(statement, schema, spec, mechanism, eps, delta)
        plan, fp, cost = _ledger_plan(parts, mechanism)
        version: int = target.version
        original = ledger.find_replay(conn, user.id, dataset_id, version, fp)
        cipher = data_cipher(conn, st.keyring, dataset_id)
    sql_token = cipher.encrypt(spec["sql"].encode())
    if original is not None:
        stored = orjson.loads(cipher.decrypt(original.answer_token))
        with db.core_transaction(immediate=True) as conn:
            replay_id = ledger.record_replay(conn, user.id, dataset_id, original,
                                             sql_token=sql_token, now=st.clock())
        return _render(statement, parts, plan, stored, replay_id, Decimal(0), Decimal(0), True,
                       eps_value(target.eps_left), delta_value(target.delta_left))

    with db.core_transaction(immediate=True) as conn:
        charged = ledger.quick_charge(conn, user.id, dataset_id, version, plan, fp, mechanism,
                                      cost, sql_token=sql_token, now=st.clock())
    if charged is None:
        with db.transaction(immediate=True) as session:
            charged = ledger.charge(session, user, dataset_id, version, plan, fp, mechanism, cost,
                                    sql_token=sql_token, now=st.clock())

    # The whole statement is charged and committed. From here on a failure loses the answer,
    # never the charge.
    data = st.cache.peek(dataset_id, version)
    if data is None:
        with db.sessions() as session:
            dataset = session.get(Dataset, dataset_id)
            assert dataset is not None
            data = st.columns_for(session, dataset, cipher)
    answers = [release_answer(p.aggregate.plan, data, mechanism=mechanism, epsilon=p.epsilon,
                              delta=p.delta) for p in parts]
    stored = answers[0] if len(parts) == 1 else {
        "parts": [answers[i] for i in sorted(range(len(parts)),
                                             key=lambda i: plan.order[i])]}
    refuse_non_finite(stored)  # orjson would store NaN as null: a bug must not become an answer
    token = cipher.encrypt(orjson.dumps(stored))
    with db.core_transaction() as conn:
        ledger.store_answer(conn, charged.entry_id, token,
                            data.version if data.version != version else None)
    return _render(statement, parts, plan, stored, charged.entry_id, charged.epsilon_charged,
                   charged.delta_charged, False, charged.epsilon_remaining,
                   charged.delta_remaining)


def ledger_target(conn: Connection, user_id: int, dataset_id: int) -> Row[Any]:
    """queries._load_target plus the dataset's name (the statement's table)."""
    row = conn.execute(_LOAD_SQL_TARGET, {"dataset_id": dataset_id, "user_id": user_id}).first()
    if row is None:
        raise NotFound("no such dataset")
    return row


def _answers_in_select_order(parts: list[Part], plan: Any, stored: dict[str, Any]
                             ) -> list[dict[str, Any]]:
    if len(parts) == 1:
        return [stored]
    return [stored["parts"][plan.order[i]] for i in range(len(parts))]


def _cells(answer: dict[str, Any]) -> list[tuple[Any, list[float]]]:
    result = answer["result"]
    if isinstance(result, list):
        return [(c["value"], c["ci95"]) for c in result]
    return [(result, answer["accuracy"]["ci95"])]


def _render(statement: Statement, parts: list[Part], plan: Any, stored: dict[str, Any],
            query_id: str | None, eps: Decimal, delta: Decimal, replayed: bool, eps_left: Decimal,
            delta_left: Decimal) -> dict[str, Any]:
    answers = _answers_in_select_order(parts, plan, stored)
    cells = [_cells(a) for a in answers]
    first = parts[0].aggregate.plan
    n_rows = len(cells[0])
    keys = _group_labels(first, statement, n_rows, answers[0])
    table: list[tuple[list[Any], list[Any]]] = []
    for g in range(n_rows):
        row: list[Any] = []
        ci: list[Any] = []
        for col in statement.columns:
            if col.kind == "aggregate":
                value, interval = cells[col.index][g]
                row.append(value)
                ci.append(interval)
            else:
                row.append(keys[g][col.index] if col.kind == "group" else keys[g][-1])
                ci.append(None)
        table.append((row, ci))
    names = [c.name for c in statement.columns]
    if statement.having is not None:
        having = statement.having
        table = [t for t in table if having(dict(zip(names, t[0], strict=True)))]
    for idx, desc in reversed(statement.order_by):
        table.sort(key=lambda t: _sort_key(t[0][idx]), reverse=desc)
    end = None if statement.limit is None else statement.offset + statement.limit
    table = table[statement.offset:end]
    return {
        "query_id": query_id,
        "columns": names,
        "rows": [r for r, _ in table],
        "ci95": [c for _, c in table],
        "aggregates": [_aggregate_out(p, a) for p, a in zip(parts, answers, strict=True)],
        "epsilon_spent": float(eps),
        "delta_spent": float(delta),
        "replayed": replayed,
        "budget": {"epsilon_remaining": float(eps_left), "delta_remaining": float(delta_left)},
    }


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def _group_labels(plan: QueryPlan, statement: Statement, n_rows: int,
                  answer: dict[str, Any]) -> list[list[Any]]:
    """Per row: the group key values in GROUP BY order, and for a histogram the bucket number
    (1..n, as SQL's WIDTH_BUCKET numbers the bins of [lower, upper))."""
    result = answer["result"]
    if not isinstance(result, list):
        return [[]]
    if statement.histogram_column is not None:
        return [[i + 1] for i in range(n_rows)]
    return [[cell["group"][name] for name in statement.group_by] for cell in result]


def _aggregate_out(part: Part, answer: dict[str, Any] | None) -> dict[str, Any]:
    agg = part.aggregate
    out: dict[str, Any] = {"column": agg.name, "aggregate": agg.plan.aggregate,
                           "function": agg.function, "epsilon": float(part.epsilon),
                           "delta": float(part.delta), "plan": agg.spec}
    if answer is not None:
        out["noise_scale"] = answer["accuracy"]["noise_scale"]
        out["accuracy"] = answer["accuracy"]
    if agg.note:
        out["note"] = agg.note
    return out


def estimate_sql(st: QueryResources, session: Session, user: User, dataset_id: int,
                 spec: dict[str, Any]) -> dict[str, Any]:
    """Cost and expected accuracy of every aggregate, from public parameters only.

    With `target_ci95_half_width` instead of `epsilon` (accuracy first): each aggregate gets
    the smallest ε meeting its target, the statement's ε is their sum, and `shares` in the
    answer is what to send with it so that each aggregate gets exactly its ε."""
    check_one_of(spec)
    if spec.get("epsilon") is None:
        return _estimate_for_target(st, session, user, dataset_id, spec)
    mechanism, eps, delta = _privacy_params(st, spec)
    dataset = get_visible_dataset(session, user, dataset_id)
    schema = schema_of(dataset)
    statement = parse_statement(schema, dataset.name, spec["sql"])
    parts = _parts(statement, schema, spec, mechanism, eps, delta)
    _, _, cost = _ledger_plan(parts, mechanism)
    budget = session.scalar(select(Budget).where(Budget.user_id == user.id,
                                                 Budget.dataset_id == dataset_id))
    eps_before, delta_before = (budget.epsilon_spent, budget.delta_spent) if budget else (0, 0)
    delta_total = delta_value(budget.delta_total) if budget else Decimal(0)
    _, (new_eps, new_delta) = ledger.composed_spend(
        ledger.StoredComposition.of(budget), delta_total, cost, at_least=(eps_before, delta_before))
    aggregates = []
    for p in parts:
        out = _aggregate_out(p, None)
        acc = estimate_accuracy(p.aggregate.plan, schema, mechanism=mechanism,
                                epsilon=p.epsilon, delta=p.delta)
        out["noise_scale"] = acc["noise_scale"]
        out["accuracy"] = acc
        aggregates.append(out)
    return {
        "epsilon": float(eps_value(max(0, new_eps - eps_before))),
        "delta": float(delta_value(max(0, new_delta - delta_before))),
        "aggregates": aggregates,
    }


def _estimate_for_target(st: QueryResources, session: Session, user: User, dataset_id: int,
                         spec: dict[str, Any]) -> dict[str, Any]:
    ceiling: Decimal = st.max_query_epsilon
    mechanism, _, delta = _privacy_params(st, {**spec, "epsilon": ceiling})
    dataset = get_visible_dataset(session, user, dataset_id)
    schema = schema_of(dataset)
    statement = parse_statement(schema, dataset.name, spec["sql"])
    names = [a.name for a in statement.aggregates]
    if mechanism == "gaussian" and len(names) > 1:
        raise InvalidRequest("a target accuracy with the Gaussian mechanism is supported for "
                             "one aggregate at a time (its delta share would depend on the "
                             "epsilon shares)", {"mechanism": ["use laplace, or one aggregate"]})
    targets = parse_target(spec.get("target_ci95_half_width"), names)
    epsilons = [smallest_epsilon(a.plan, schema, mechanism=mechanism, delta=delta,
                                 target=targets[a.name], max_epsilon=ceiling, name=a.name)
                for a in statement.aggregates]
    total = sum(epsilons, Decimal(0))
    if total > ceiling:
        raise InvalidRequest(f"the targets need epsilon {total} in all, above the per-query "
                             f"maximum {ceiling}", {"target_ci95_half_width": ["unreachable"]})
    out = estimate_sql(st, session, user, dataset_id,
                       {**spec, "epsilon": total, "target_ci95_half_width": None,
                        "shares": dict(zip(names, epsilons, strict=True))})
    return {**out, "epsilon_to_request": float(total),
            "shares": {n: float(e) for n, e in zip(names, epsilons, strict=True)}}
