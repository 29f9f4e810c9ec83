from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, DateTime, Dict, Float, Integer, List, Nested, Raw, String
from apiflask.fields import Decimal as DecimalField
from apiflask.validators import Length, OneOf, Range
from marshmallow import RAISE

from ..http.auth import auth, current_user
from ..http.memory import release_freed_memory
from ..http.session import db_session
from ..runtime.state import state
from ..services import accuracy_first, exploration
from ..services import queries as queries_service
from ..services.dummy_data import DEFAULT_DUMMY_ROWS, DEFAULT_DUMMY_SEED, MAX_DUMMY_ROWS, MAX_DUMMY_SEED
from ..services.query_plan import AGGREGATES, OPS
from .schemas_common import StrictSchema

bp = APIBlueprint("queries", __name__, url_prefix="/v1", tag="Queries")


class WhereIn(StrictSchema):
    column = String(required=True, validate=Length(1, 64))
    op = String(required=True, validate=OneOf(OPS))
    value = Raw(required=True, metadata={"description": "number, string, bool, or a list for in/between"})


class QueryIn(StrictSchema):
    aggregate = String(required=True, validate=OneOf(AGGREGATES))
    column = String(load_default=None, allow_none=True, validate=Length(1, 64))
    quantile = Float(load_default=None, allow_none=True, allow_nan=False, validate=Range(0, 1))
    bins = Integer(load_default=None, allow_none=True, strict=True, validate=Range(1, 1000))
    where = List(Nested(WhereIn), load_default=list, validate=Length(max=20))
    group_by = List(String(validate=Length(1, 64)), load_default=list, validate=Length(max=4))
    mechanism = String(load_default="laplace", validate=OneOf(("laplace", "gaussian")))
    epsilon = DecimalField(required=True, allow_nan=False, places=None,
                           metadata={"description": "> 0, at most the service's per-query maximum"})
    delta = DecimalField(load_default=None, allow_none=True, allow_nan=False,
                         metadata={"description": "gaussian only: 0 < delta < 1"})
    dummy = Boolean(load_default=False, metadata={
        "description": "run on synthetic rows drawn from the public schema alone: free, not "
                       "in the ledger, answer marked dummy (GET /datasets/{id}/dummy shows "
                       "the rows)"})
    dummy_seed = Integer(load_default=None, allow_none=True, strict=True,
                         validate=Range(0, MAX_DUMMY_SEED),
                         metadata={"description": f"dummy only; default {DEFAULT_DUMMY_SEED}"})
    dummy_rows = Integer(load_default=None, allow_none=True, strict=True,
                         validate=Range(1, MAX_DUMMY_ROWS),
                         metadata={"description": f"dummy only; default {DEFAULT_DUMMY_ROWS}"})


class EstimateIn(QueryIn):
    epsilon = DecimalField(load_default=None, allow_none=True, allow_nan=False, places=None,
                           metadata={"description": "or give target_ci95_half_width instead"})
    target_ci95_half_width = Float(load_default=None, allow_none=True, allow_nan=False,
                                   validate=Range(0, min_inclusive=False), metadata={
                                       "description": "accuracy first: answer the smallest "
                                                      "epsilon whose 95% interval is this "
                                                      "narrow (count, sum, histogram)"})



class AccuracyOut(StrictSchema):
    noise_scale = Float(metadata={"description": "standard error of the value; for a grouped "
                                                 "answer the largest of the groups'"})
    ci95 = List(Float(), metadata={"description": "95% interval for the true value (not on "
                                                  "grouped answers: each group has its own)"})
    ci95_worst_case = List(Float(), metadata={
        "description": "an interval valid for every dataset; present (always, for its "
                       "aggregate and column type) when ci95 is calibrated for typical data"})
    grid = Float(metadata={"description": "public power-of-two grid every released value is a "
                                          "multiple of (float safety); 1 for counts"})


class GroupResultOut(StrictSchema):
    group = Dict()
    value = Float()
    ci95 = List(Float())
    ci95_worst_case = List(Float())


class BudgetLeftOut(StrictSchema):
    epsilon_remaining = Float()
    delta_remaining = Float()


class QueryOut(StrictSchema):
    query_id = String(allow_none=True, metadata={"description": "null for a dummy answer "
                                                                "(it is not in the ledger)"})
    result = Raw(metadata={"description": "a number, or a list of {group, value, ci95}"})
    epsilon_spent = Float()
    delta_spent = Float()
    replayed = Boolean()
    accuracy = Nested(AccuracyOut)
    budget = Nested(BudgetLeftOut)
    dummy = Boolean(metadata={"description": "true: computed on dummy rows, charged nothing"})


class EstimateAccuracyOut(StrictSchema):
    noise_scale = Float(allow_none=True)
    ci95_half_width = Float(allow_none=True)
    ci95 = List(Float(), allow_none=True,
                metadata={"description": "interval around the true value, as [-w, +w]"})
    components = Dict(metadata={"description": "noise std-dev of each noisy component"})
    grid = Float(allow_none=True, metadata={"description": "the grid the value will lie on"})
    note = String()


class EstimateOut(StrictSchema):
    epsilon = Float()
    delta = Float()
    accuracy = Nested(EstimateAccuracyOut)
    epsilon_to_request = Float(metadata={"description": "accuracy first: the smallest epsilon "
                                                        "meeting target_ci95_half_width"})
    target_ci95_half_width = Float()


class LedgerQuery(StrictSchema):
    dataset_id = Integer(load_default=None)
    page = Integer(load_default=1, validate=Range(1, 100_000))
    per_page = Integer(load_default=100, validate=Range(1, 1000))


class LedgerEntryOut(StrictSchema):
    query_id = String()
    user_id = Integer()
    dataset_id = Integer()
    dataset_version = Integer()
    aggregate = String()
    plan = Dict()
    mechanism = String()
    epsilon = Float()
    delta = Float()
    epsilon_charged = Float()
    delta_charged = Float()
    replayed = Boolean()
    answered = Boolean()
    created_at = DateTime()


@bp.post("/datasets/<int:dataset_id>/query")
@bp.auth_required(auth, roles=["analyst"])
@bp.input(QueryIn, arg_name="spec")
@bp.output(QueryOut)
@bp.doc(responses={403: "budget_exhausted: nothing was charged", 404: "no such dataset or no budget"})
def query(dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    run = exploration.run_dummy_query if spec["dummy"] else queries_service.run_query
    try:
        return run(state(), current_user(), dataset_id, spec)
    finally:
        # a query's temporaries (masks, chunks, a first use's derived arrays) are freed by
        # now; glibc would keep their pages, and each worker's heap would stay at its
        # largest query's peak (issue 14: host memory within 1.3 copies)
        release_freed_memory()


@bp.post("/datasets/<int:dataset_id>/query/estimate")
@bp.auth_required(auth, roles=["analyst"])
@bp.input(EstimateIn, arg_name="spec")
@bp.output(EstimateOut)
def estimate(dataset_id: int, spec: dict[str, Any]) -> dict[str, Any]:
    return accuracy_first.estimate(state(), db_session(), current_user(), dataset_id, spec)


@bp.get("/queries")
@bp.auth_required(auth, roles=["analyst", "admin"])
@bp.input(LedgerQuery, location="query", arg_name="q", unknown=RAISE)
@bp.output(LedgerEntryOut(many=True))
def ledger(q: dict[str, Any]) -> list[dict[str, Any]]:
    return queries_service.list_ledger(db_session(), current_user(), **q)
