from __future__ import annotations

from decimal import Decimal
from typing import Any

from apiflask import APIBlueprint
from apiflask.fields import Boolean, DateTime, Float, Integer, String
from apiflask.fields import Decimal as DecimalField
from apiflask.validators import OneOf, Range
from marshmallow import RAISE

from ..domain.renewal import RENEWAL_PERIODS
from ..http.auth import auth, current_user
from ..http.session import db_session
from ..runtime.state import state
from ..services import budgets as budgets_service
from ..services.budgets import UNSET, BudgetView
from ..storage.models import Budget
from .schemas_common import StrictSchema

bp = APIBlueprint("budgets", __name__, url_prefix="/v1", tag="Budgets")


class BudgetIn(StrictSchema):
    epsilon = DecimalField(required=True, allow_nan=False, validate=Range(min=0, max=Decimal(1e6)))
    delta = DecimalField(load_default=Decimal(0), allow_nan=False,
                         validate=Range(min=0, max=1, max_inclusive=False))
    frozen = Boolean(load_default=None, allow_none=True)
    # Left out: unchanged. "none" or null: no renewal / no cap.
    renewal_period = String(allow_none=True, validate=OneOf(("none", *RENEWAL_PERIODS)),
                            metadata={"description": "epsilon/delta become the limit per "
                                      "calendar period (UTC): daily, weekly (from Monday) or "
                                      "monthly (from the 1st); none stops renewing. Every "
                                      "period adds up to the limit to the lifetime privacy loss."})
    lifetime_epsilon_cap = DecimalField(allow_none=True, allow_nan=False,
                                        validate=Range(min=0, max=Decimal(1e6)),
                                        metadata={"description": "most all periods may spend"})
    lifetime_delta_cap = DecimalField(allow_none=True, allow_nan=False,
                                      validate=Range(min=0, max=1, max_inclusive=False))


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
    renewal_period = String(allow_none=True)
    period_start = DateTime(allow_none=True)
    period_ends_at = DateTime(allow_none=True)
    lifetime_epsilon_spent = Float()
    lifetime_delta_spent = Float()
    lifetime_epsilon_cap = Float(allow_none=True)
    lifetime_delta_cap = Float(allow_none=True)
    ledger_entries = Integer(metadata={"description": "length of the budget's ledger hash chain"})
    ledger_head = String(metadata={"description": "hash of the chain's newest entry (pin it)"})


class BudgetQuery(StrictSchema):
    user_id = Integer(load_default=None)
    dataset_id = Integer(load_default=None)


def _number(d: Decimal | None) -> float | None:
    return None if d is None else float(d)


def dump_budget(b: Budget) -> dict[str, Any]:
    v = BudgetView.of(b, state().clock())
    return {
        "user_id": v.user_id, "dataset_id": v.dataset_id,
        "epsilon_total": float(v.epsilon_total), "delta_total": float(v.delta_total),
        "epsilon_spent": float(v.epsilon_spent), "delta_spent": float(v.delta_spent),
        "epsilon_remaining": float(v.epsilon_remaining),
        "delta_remaining": float(v.delta_remaining),
        "queries": v.queries, "frozen": v.frozen,
        "renewal_period": v.renewal_period, "period_start": v.period_start,
        "period_ends_at": v.period_ends_at,
        "lifetime_epsilon_spent": float(v.lifetime_epsilon_spent),
        "lifetime_delta_spent": float(v.lifetime_delta_spent),
        "lifetime_epsilon_cap": _number(v.lifetime_epsilon_cap),
        "lifetime_delta_cap": _number(v.lifetime_delta_cap),
        "ledger_entries": v.ledger_count, "ledger_head": v.ledger_head,
    }


@bp.put("/budgets/<int:user_id>/<int:dataset_id>")
@bp.auth_required(auth, roles=["admin"])
@bp.input(BudgetIn, arg_name="body")
@bp.output(BudgetOut)
@bp.doc(responses={403: "not an admin",
                   409: "below what is already spent (this period's, or lifetime for a cap)",
                   422: "delta above the service's cap (PRIVACY_API_MAX_BUDGET_DELTA)"})
def put_budget(user_id: int, dataset_id: int, body: dict[str, Any]) -> dict[str, Any]:
    budget = budgets_service.set_budget(
        db_session(), current_user(), user_id, dataset_id,
        epsilon=body["epsilon"], delta=body["delta"], frozen=body["frozen"],
        max_delta=state().settings.max_budget_delta,
        renewal_period=(UNSET if "renewal_period" not in body
                        else None if body["renewal_period"] in (None, "none")
                        else body["renewal_period"]),
        lifetime_epsilon_cap=body.get("lifetime_epsilon_cap", UNSET),
        lifetime_delta_cap=body.get("lifetime_delta_cap", UNSET),
        now=state().clock(),
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
