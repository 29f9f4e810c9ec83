"""Accuracy first: the smallest ε whose 95% interval is at most a target half-width.

Only for aggregates whose accuracy does not depend on the data (count, sum, histogram and
their grouped forms): there `estimate_accuracy` (the same `mechanisms.accuracy_for` the
estimate endpoints report) gives the half-width from public parameters alone. The half-width
never grows with ε, so a bisection over the service's integer ε quanta finds the smallest ε
that meets the target, exactly to one quantum (1e-12), whatever the noise law: for the
discrete mechanisms the half-width is a step function and the answer is the step's edge.
A mean, variance or quantile's interval depends on the private row count: those are refused
with the reason, never guessed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..domain.errors import InvalidRequest
from ..domain.units import eps_units, eps_value
from ..storage.dataset_schema import DatasetSchema
from .query_plan import QueryPlan
from .query_resources import QueryResources
from .release import estimate_accuracy

DATA_DEPENDENT = {
    "mean": "a mean's interval depends on the private number of matching rows",
    "variance": "a variance's interval depends on the private number of matching rows",
    "std": "a standard deviation's interval depends on the private number of matching rows",
    "quantile": "a quantile's interval depends on how the private values are spread",
}


def half_width(plan: QueryPlan, schema: DatasetSchema, *, mechanism: str, epsilon: Decimal,
               delta: Decimal) -> float:
    acc = estimate_accuracy(plan, schema, mechanism=mechanism, epsilon=epsilon, delta=delta)
    half = acc["ci95_half_width"]
    assert half is not None, "only data-independent aggregates reach here"
    return float(half)


def smallest_epsilon(plan: QueryPlan, schema: DatasetSchema, *, mechanism: str, delta: Decimal,
                     target: float, max_epsilon: Decimal, name: str | None = None) -> Decimal:
    """The smallest ε (in 1e-12 quanta) with a 95% half-width <= `target`; InvalidRequest
    (with the reason) when the aggregate's accuracy depends on the data or the target cannot
    be met within `max_epsilon`."""
    where = name or plan.aggregate
    if plan.aggregate in DATA_DEPENDENT:
        raise InvalidRequest(
            f"{where}: a target accuracy is supported for count, sum and histogram (and their "
            f"grouped forms) only: {DATA_DEPENDENT[plan.aggregate]}; give epsilon instead",
            {"target_ci95_half_width": [DATA_DEPENDENT[plan.aggregate]], "aggregate": where})
    if not target > 0:
        raise InvalidRequest("the target half-width must be > 0",
                             {"target_ci95_half_width": ["must be > 0"]})
    hi = eps_units(max_epsilon)
    best = half_width(plan, schema, mechanism=mechanism, epsilon=max_epsilon, delta=delta)
    if best > target:
        raise InvalidRequest(
            f"{where}: even the per-query maximum epsilon {max_epsilon} gives a 95% half-width "
            f"of {best:.6g} > {target:g}",
            {"target_ci95_half_width": [f"unreachable: best is {best:.6g}"], "aggregate": where})
    lo = 0  # ε = 0 meets nothing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if half_width(plan, schema, mechanism=mechanism, epsilon=eps_value(mid),
                      delta=delta) <= target:
            hi = mid
        else:
            lo = mid
    return eps_value(hi)


def parse_target(raw: Any, names: list[str]) -> dict[str, float]:
    """A statement's targets: one number for every aggregate, or one per output name."""
    if isinstance(raw, bool):
        raw = None
    if isinstance(raw, int | float):
        return {n: float(raw) for n in names}
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - set(names))
        missing = [n for n in names if n not in raw]
        bad = [k for k, v in raw.items() if isinstance(v, bool) or not isinstance(v, int | float)]
        if not (unknown or missing or bad):
            return {n: float(raw[n]) for n in names}
        raise InvalidRequest("target_ci95_half_width needs a number for every aggregate",
                             {"target_ci95_half_width": {"unknown": unknown, "missing": missing,
                                                         "not_a_number": bad}})
    raise InvalidRequest("target_ci95_half_width is a number, or an object of numbers by "
                         "output column", {"target_ci95_half_width": ["wrong type"]})


def check_one_of(spec: dict[str, Any]) -> None:
    if (spec.get("epsilon") is None) == (spec.get("target_ci95_half_width") is None):
        raise InvalidRequest("give epsilon or target_ci95_half_width (exactly one)",
                             {"epsilon": ["give epsilon or target_ci95_half_width, not both"]})


def estimate(st: QueryResources, session: Any, user: Any, dataset_id: int,
             spec: dict[str, Any]) -> dict[str, Any]:
    """/query/estimate: at the given ε, or accuracy first at a target half-width."""
    from .queries import estimate_query

    check_one_of(spec)
    if spec.get("epsilon") is not None:
        return estimate_query(st, session, user, dataset_id, spec)
    return estimate_for_target(st, session, user, dataset_id, spec)


def estimate_for_target(st: QueryResources, session: Any, user: Any, dataset_id: int,
                        spec: dict[str, Any]) -> dict[str, Any]:
    """/query/estimate with `target_ci95_half_width` instead of `epsilon`: the estimate at the
    smallest ε meeting the target, and that ε as `epsilon_to_request`."""
    from .datasets import get_visible_dataset, schema_of
    from .queries import _privacy_params, estimate_query
    from .query_plan import build_plan

    ceiling: Decimal = st.max_query_epsilon
    mechanism, _, delta = _privacy_params(st, {**spec, "epsilon": ceiling})
    schema = schema_of(get_visible_dataset(session, user, dataset_id))
    plan = build_plan(schema, spec)
    target = float(spec["target_ci95_half_width"])
    eps = smallest_epsilon(plan, schema, mechanism=mechanism, delta=delta, target=target,
                           max_epsilon=ceiling)
    out = estimate_query(st, session, user, dataset_id, {**spec, "epsilon": eps})
    return {**out, "epsilon_to_request": float(eps), "target_ci95_half_width": target}
