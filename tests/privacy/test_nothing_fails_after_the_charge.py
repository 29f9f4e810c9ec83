"""Nothing fails after the charge, and nothing non-finite is ever released.

Bounds whose calibration would overflow are refused when the dataset is created (422 in the
error shape, nothing created); a query whose noise would not be a finite number is refused
before it is charged; the widest accepted bounds answer every aggregate with finite numbers;
and the JSON encoder refuses NaN/Infinity, so a bug would be a clean 500, never an invalid body.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.conftest import make_app
from tests.helpers import Api
from tests.privacy.conftest import strict_body


def _schema(lower: float, upper: float, name: str = "wide") -> dict[str, Any]:
    return {"name": name, "columns": [{"name": "v", "type": "float", "lower": lower,
                                       "upper": upper},
                                      {"name": "g", "type": "bool"}]}


@pytest.mark.parametrize(("lower", "upper"), [
    (-1.7e308, 1.7e308),    # the width overflows
    (-1e160, 1e160),        # the variance's bound (half the width, squared) overflows
    (0.0, 1e-320),          # a subnormal bound: no float-safe grid
], ids=["width", "square", "tiny"])
def test_overflowing_bounds_are_refused_at_creation(api: Api, lower: float, upper: float) -> None:
    _, owner = api.user("o", "owner")
    resp = api.as_(owner).post("/v1/datasets", json=_schema(lower, upper))
    assert resp.status_code == 422
    body = strict_body(resp)
    assert set(body) == {"code", "message", "details"} and body["code"] == "invalid_request"
    assert list(body["details"]) == ["columns.0"]  # the offending column, by position
    assert api.as_(owner).get("/v1/datasets").get_json() == []  # nothing was created


def test_the_widest_accepted_bounds_answer_every_aggregate_finitely(api: Api) -> None:
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, key = api.user("a", "analyst")
    rows = [{"v": v, "g": i % 2 == 0} for i, v in enumerate([-1e150, 1e150, 0.0, 3.5, -2e149])]
    ds = api.dataset(owner, schema=_schema(-1e150, 1e150), rows=rows)
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                              json={"epsilon": 1000, "delta": 1e-3}).status_code == 200
    analyst = api.as_(key)
    for aggregate in ("sum", "mean", "variance", "std", "quantile", "histogram"):
        for mechanism in ({}, {"mechanism": "gaussian", "delta": 1e-9}):
            if aggregate == "quantile" and mechanism:
                continue
            for group_by in ([], ["g"]) if aggregate != "histogram" else ([],):
                spec = {"aggregate": aggregate, "column": "v", "epsilon": 1, **mechanism,
                        "group_by": group_by, "quantile": 0.5 if aggregate == "quantile"
                        else None, "bins": 4 if aggregate == "histogram" else None}
                resp = analyst.post(f"/v1/datasets/{ds}/query", json=spec)
                assert resp.status_code == 200, (spec, resp.get_json())
                body = strict_body(resp)  # refuses NaN and Infinity
                _assert_finite(body)


def _assert_finite(value: Any) -> None:
    if isinstance(value, float):
        assert math.isfinite(value)
    elif isinstance(value, dict):
        for item in value.values():
            _assert_finite(item)
    elif isinstance(value, list):
        for item in value:
            _assert_finite(item)


def test_a_query_whose_noise_would_overflow_is_refused_before_the_charge(api: Api) -> None:
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, key = api.user("a", "analyst")
    ds = api.dataset(owner, schema=_schema(-1e150, 1e150),
                     rows=[{"v": 1.0, "g": True}])
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                              json={"epsilon": 10, "delta": 1e-3}).status_code == 200
    analyst = api.as_(key)
    for aggregate in ("sum", "mean"):
        for _ in range(3):  # every retry is refused alike, and none is charged
            resp = analyst.post(f"/v1/datasets/{ds}/query",
                                json={"aggregate": aggregate, "column": "v", "epsilon": 1e-300})
            assert resp.status_code == 422, resp.get_json()
            assert strict_body(resp)["code"] == "invalid_request"
    budget = analyst.get("/v1/budgets").get_json()[0]
    assert budget["epsilon_spent"] == 0
    assert analyst.get(f"/v1/queries?dataset_id={ds}").get_json() == []


def test_the_json_encoder_refuses_nan_and_infinity(db_url: str) -> None:
    app = make_app(db_url)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: errors become responses

    @app.get("/test-non-finite")
    def non_finite() -> dict[str, float]:  # a stand-in for a bug that produced NaN
        return {"value": float("nan")}

    try:
        resp = app.test_client().get("/test-non-finite")
        assert resp.status_code == 500
        body = strict_body(resp)  # a valid JSON body in the error shape, not "NaN"
        assert body["code"] == "internal_error" and set(body) == {"code", "message", "details"}
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(RuntimeError, match="non-finite"):
                app.json.dumps({"value": [1.0, bad]})
    finally:
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()
