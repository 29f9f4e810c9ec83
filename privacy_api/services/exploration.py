"""Exploration on dummy data: free, never in the ledger (issue 15, part 2).

A query or statement with `"dummy": true` runs the same plan through the same mechanisms, at
the ε/δ asked (so the noise looks as it will on the real data), on synthetic rows drawn from
the public schema alone (`dummy_data`). No record is read and no key is used, so nothing about
the data is released and nothing is charged: there is no budget check beyond validating the
parameters (an exhausted budget can still explore), no ledger entry and no stored answer, and
replay does not apply (a repeat draws fresh noise on the same rows: they are public).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from ..domain.units import delta_value, eps_value
from ..storage.dataset_schema import DatasetSchema
from ..storage.models import User
from .datasets import get_visible_dataset, schema_of
from .dummy_data import DEFAULT_DUMMY_ROWS, DEFAULT_DUMMY_SEED, dummy_columns, dummy_records
from .non_finite import refuse_non_finite
from .queries import _load_target, _privacy_params, _response
from .query_plan import build_plan
from .query_resources import QueryResources
from .release import query_cost, release_answer
from .sql_plan import parse_statement
from .sql_queries import _ledger_plan, _parts, _render, ledger_target


def fetch_dummy(session: Session, user: User, dataset_id: int, *, rows: int,
                seed: int) -> dict[str, Any]:
    """Dummy rows for anyone who may see the dataset (its analysts, owner, admins)."""
    dataset = get_visible_dataset(session, user, dataset_id)
    schema = schema_of(dataset)
    return {"dataset_id": dataset.id, "dummy": True, "seed": seed, "rows": rows,
            "columns": schema.names, "records": dummy_records(schema, rows, seed)}


def _dummy_source(spec: dict[str, Any]) -> tuple[int, int]:
    rows = spec.get("dummy_rows")
    seed = spec.get("dummy_seed")
    return (DEFAULT_DUMMY_ROWS if rows is None else rows,
            DEFAULT_DUMMY_SEED if seed is None else seed)




def run_dummy_query(st: QueryResources, user: User, dataset_id: int, spec: dict[str, Any]
                    ) -> dict[str, Any]:
    mechanism, eps, delta = _privacy_params(st, spec)
    rows, seed = _dummy_source(spec)
    with st.db.core_transaction() as conn:
        target = _load_target(conn, user.id, dataset_id)  # 404 unless the analyst holds a budget
    schema = DatasetSchema.from_model(target.columns, target.privacy_unit_column,
                                      target.privacy_unit_max_rows)
    plan = build_plan(schema, spec)
    query_cost(plan, schema, mechanism=mechanism, epsilon=eps, delta=delta)  # same validation
    data = dummy_columns(dataset_id, schema, rows, seed)
    answer = release_answer(plan, data, mechanism=mechanism, epsilon=eps, delta=delta)
    refuse_non_finite(answer)
    out = _response(None, answer, Decimal(0), Decimal(0), False,
                    eps_value(target.eps_left), delta_value(target.delta_left))
    return {**out, "dummy": True}


def run_dummy_sql(st: QueryResources, user: User, dataset_id: int, spec: dict[str, Any]
                  ) -> dict[str, Any]:
    mechanism, eps, delta = _privacy_params(st, spec)
    rows, seed = _dummy_source(spec)
    with st.db.core_transaction() as conn:
        target = ledger_target(conn, user.id, dataset_id)
    schema = DatasetSchema.from_model(target.columns, target.privacy_unit_column,
                                      target.privacy_unit_max_rows)
    statement = parse_statement(schema, target.name, spec["sql"])
    parts = _parts(statement, schema, spec, mechanism, eps, delta)
    plan, _, _ = _ledger_plan(parts, mechanism)
    data = dummy_columns(dataset_id, schema, rows, seed)
    answers = [release_answer(p.aggregate.plan, data, mechanism=mechanism, epsilon=p.epsilon,
                              delta=p.delta) for p in parts]
    stored = answers[0] if len(parts) == 1 else {
        "parts": [answers[i] for i in sorted(range(len(parts)), key=lambda i: plan.order[i])]}
    refuse_non_finite(stored)
    out = _render(statement, parts, plan, stored, None, Decimal(0), Decimal(0),
                  False, eps_value(target.eps_left), delta_value(target.delta_left))
    return {**out, "dummy": True}
