from __future__ import annotations

from decimal import Decimal
from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, Float, Integer
from apiflask.fields import Decimal as DecimalField
from apiflask.validators import Range
from marshmallow import RAISE

from ..auth import auth, current_user
from ..models import Budget
from ..services import budgets as budgets_service
from ..services.budgets import BudgetView
from ..state import state
from .schemas_common import StrictSchema
from .session import db_session

bp = APIBlueprint("budgets", __name__, url_prefix="/v1", tag="Budgets")


class BudgetIn(StrictSchema):
    epsilon = DecimalField(required=True, allow_nan=False, validate=Range(min=0, max=Decimal(1e6)))
    delta = DecimalField(load_default=Decimal(0), allow_nan=False,
                         validate=Range(min=0, max=1, max_inclusive=False))
    frozen = Boolean(load_default=None, allow_none=True)


class BudgetOut(StrictSchema):
    user_id = Integer()
    dataset_id = Integer()
    epsilon_total = Float()
    delta_total = Float()
    epsilon_spent = Float()
    delta_spent = Float()
    epsilon_remaining = Float()
    delta_remaining = Float()
    queries = Integer()
    frozen = Boolean()


class BudgetQuery(StrictSchema):
    user_id = Integer(load_default=None)
    dataset_id = Integer(load_default=None)


def dump_budget(b: Budget) -> dict[str, Any]:
    v = BudgetView.of(b)
    return {
        "user_id": v.user_id, "dataset_id": v.dataset_id,
        "epsilon_total": float(v.epsilon_total), "delta_total": float(v.delta_total),
        "epsilon_spent": float(v.epsilon_spent), "delta_spent": float(v.delta_spent),
        "epsilon_remaining": float(v.epsilon_remaining),
        "delta_remaining": float(v.delta_remaining),
        "queries": v.queries, "frozen": v.frozen,
    }


@bp.put("/budgets/<int:user_id>/<int:dataset_id>")
@bp.auth_required(auth, roles=["admin"])
@bp.input(BudgetIn, arg_name="body")
@bp.output(BudgetOut)
@bp.doc(responses={409: "below what is already spent",
                   422: "delta above the service's cap (PRIVACY_API_MAX_BUDGET_DELTA)"})
def put_budget(user_id: int, dataset_id: int, body: dict[str, Any]) -> dict[str, Any]:
    budget = budgets_service.set_budget(
        db_session(), current_user(), user_id, dataset_id,
        epsilon=body["epsilon"], delta=body["delta"], frozen=body["frozen"],
        max_delta=state().settings.max_budget_delta,
    )
    return dump_budget(budget)


@bp.get("/budgets")
@bp.auth_required(auth)
@bp.input(BudgetQuery, location="query", arg_name="q", unknown=RAISE)
@bp.output(BudgetOut(many=True))
def list_budgets(q: dict[str, Any]) -> list[dict[str, Any]]:
    budgets = budgets_service.list_budgets(
        db_session(), current_user(), user_id=q["user_id"], dataset_id=q["dataset_id"]
    )
    return [dump_budget(b) for b in budgets]
