from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, Raw, String
from apiflask.fields import Decimal as DecimalField
from apiflask.validators import Length, OneOf, Range

from ..http.auth import auth, current_user
from ..http.memory import release_freed_memory
from ..http.session import db_session
from ..runtime.state import state
from ..services import exploration, sql_queries
from ..services.dummy_data import DEFAULT_DUMMY_ROWS, DEFAULT_DUMMY_SEED, MAX_DUMMY_ROWS, MAX_DUMMY_SEED
from ..services.sql_plan import MAX_SQL_CHARS
from .queries import BudgetLeftOut
from .schemas_common import StrictSchema

bp = APIBlueprint("sql", __name__, url_prefix="/v1", tag="SQL")


class SqlIn(StrictSchema):
    sql = String(required=True, validate=Length(1, MAX_SQL_CHARS), metadata={
        "description": "one SELECT over the dataset's table (its name, case-insensitive)"})
    epsilon = DecimalField(required=True, allow_nan=False, places=None,
                           metadata={"description": "the whole statement's epsilon"})
    delta = DecimalField(load_default=None, allow_none=True, allow_nan=False)
    mechanism = String(load_default="laplace", validate=OneOf(("laplace", "gaussian")))
    shares = Dict(keys=String(),
                  values=DecimalField(allow_nan=False, places=None), load_default=None,
                  allow_none=True, metadata={
                      "description": "relative weight of each aggregate's share of epsilon and "
                                     "delta, by output column name (default: equal shares)"})
    dummy = Boolean(load_default=False, metadata={
        "description": "run on synthetic rows drawn from the public schema alone: free, not "
                       "in the ledger, answer marked dummy"})
    dummy_seed = Integer(load_default=None, allow_none=True, strict=True,
                         validate=Range(0, MAX_DUMMY_SEED),
                         metadata={"description": f"dummy only; default {DEFAULT_DUMMY_SEED}"})
    dummy_rows = Integer(load_default=None, allow_none=True, strict=True,
                         validate=Range(1, MAX_DUMMY_ROWS),
                         metadata={"description": f"dummy only; default {DEFAULT_DUMMY_ROWS}"})


class SqlEstimateIn(SqlIn):
    epsilon = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                           metadata={"description": "or give target_ci95_half_width instead"})
    target_ci95_half_width = Raw(load_default=None, allow_none=True, metadata={
        "description": "accuracy first: a 95% half-width for every aggregate (a number), or "
                       "one per output column (an object); count, sum and histogram only"})



class SqlAggregateOut(StrictSchema):
    column = String()
    aggregate = String()
    function = String()
    epsilon = Float()
    delta = Float()
    noise_scale = Float(allow_none=True)
    accuracy = Dict()
    plan = Dict(metadata={"description": "the equivalent JSON plan (POST /query body)"})
    note = String()


class SqlOut(StrictSchema):
    query_id = String(allow_none=True, metadata={"description": "null for a dummy answer"})
    columns = List(String())
    rows = List(List(Raw()))
    ci95 = List(List(Raw(allow_none=True)),
                metadata={"description": "parallel to rows: [low, high] per aggregate, null "
                                         "for group columns"})
    aggregates = List(Nested(SqlAggregateOut))
    epsilon_spent = Float()
    delta_spent = Float()
    replayed = Boolean()
    budget = Nested(BudgetLeftOut)
    dummy = Boolean(metadata={"description": "true: computed on dummy rows, charged nothing"})


class SqlEstimateOut(StrictSchema):
    epsilon = Float()
    delta = Float()
    aggregates = List(Nested(SqlAggregateOut))
    epsilon_to_request = Float()
    shares = Dict(metadata={"description": "accuracy first: send these shares with "
                                           "epsilon_to_request"})


@bp.post("/datasets/<int:dataset_id>/sql")
@bp.auth_required(auth, roles=["analyst"])
@bp.input(SqlIn, arg_name="spec")
@bp.output(SqlOut)
@bp.doc(responses={403: "budget_exhausted: nothing was charged",
                   422: "not a supported SELECT (details name the construct); nothing charged"})
def run(dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    execute = exploration.run_dummy_sql if spec["dummy"] else sql_queries.run_sql
    try:
        return execute(state(), current_user(), dataset_id, spec)
    finally:
        release_freed_memory()  # as the JSON query view: return the query's freed pages


@bp.post("/datasets/<int:dataset_id>/sql/estimate")
@bp.auth_required(auth, roles=["analyst"])
@bp.input(SqlEstimateIn, arg_name="spec")
@bp.output(SqlEstimateOut)
def estimate(dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    return sql_queries.estimate_sql(state(), db_session(), current_user(), dataset_id, spec)
