"""Accuracy first: a target 95% half-width instead of ε gives the smallest ε that meets it,
to one ε quantum (1e-12), checked against mechanisms.accuracy_for itself; data-dependent
aggregates are refused with the reason."""

from __future__ import annotations

from decimal import Decimal

import pytest

import mechanisms as mech
from tests.helpers import patient_rows

QUANTUM = Decimal("1e-12")


@pytest.fixture
def setup(api):
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(200))
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                              json={"epsilon": 20, "delta": 1e-5}).status_code == 200
    return api.as_(analyst), ds


def _half(aggregate, eps, **kw):
    return mech.accuracy_for(aggregate, epsilon=float(eps), **kw).ci95_halfwidth


@pytest.mark.parametrize(("spec", "target", "acc"), [
    ({"aggregate": "count"}, 10.0, {"aggregate": "count"}),
    ({"aggregate": "count", "group_by": ["sex"]}, 3.0, {"aggregate": "count"}),
    ({"aggregate": "histogram", "column": "age", "bins": 5}, 25.0, {"aggregate": "histogram"}),
    ({"aggregate": "sum", "column": "cost"}, 20_000.0,
     {"aggregate": "sum", "lower": 0, "upper": 10000}),
    ({"aggregate": "count", "mechanism": "gaussian", "delta": 1e-6}, 15.0,
     {"aggregate": "count", "mechanism": "gaussian", "delta": 1e-6}),
])
def test_json_estimate_answers_the_smallest_epsilon_meeting_the_target(setup, spec, target, acc):
    analyst, ds = setup
    resp = analyst.post(f"/v1/datasets/{ds}/query/estimate",
                        json={**spec, "target_ci95_half_width": target})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    eps = Decimal(repr(body["epsilon_to_request"]))
    params = {k: v for k, v in acc.items() if k != "aggregate"}
    kind = acc["aggregate"]
    assert _half(kind, eps, **params) <= target < _half(kind, eps - QUANTUM, **params)
    assert body["accuracy"]["ci95_half_width"] <= target
    # nothing was spent
    assert analyst.get("/v1/budgets").get_json()[0]["epsilon_spent"] == 0


@pytest.mark.parametrize("spec", [{"aggregate": "mean", "column": "cost"},
                                  {"aggregate": "quantile", "column": "age", "quantile": 0.5},
                                  {"aggregate": "variance", "column": "age"}])
def test_data_dependent_aggregates_say_why_not(setup, spec):
    analyst, ds = setup
    resp = analyst.post(f"/v1/datasets/{ds}/query/estimate",
                        json={**spec, "target_ci95_half_width": 5})
    assert resp.status_code == 422
    assert "depends on" in resp.get_json()["details"]["target_ci95_half_width"][0]


def test_unreachable_target_and_ambiguous_bodies_are_refused(setup):
    analyst, ds = setup
    resp = analyst.post(f"/v1/datasets/{ds}/query/estimate",
                        json={"aggregate": "sum", "column": "cost", "target_ci95_half_width": 0.001})
    assert resp.status_code == 422 and "unreachable" in str(resp.get_json()["details"])
    for body in ({"aggregate": "count"},
                 {"aggregate": "count", "epsilon": 1, "target_ci95_half_width": 3}):
        assert analyst.post(f"/v1/datasets/{ds}/query/estimate", json=body).status_code == 422
    # the query endpoint itself still needs epsilon
    assert analyst.post(f"/v1/datasets/{ds}/query",
                        json={"aggregate": "count", "target_ci95_half_width": 3}).status_code == 422


def test_sql_targets_give_shares_that_the_statement_then_gets(setup):
    analyst, ds = setup
    text = "SELECT sex, COUNT(*) AS n, SUM(cost) AS total FROM patients GROUP BY sex"
    est = analyst.post(f"/v1/datasets/{ds}/sql/estimate", json={
        "sql": text, "target_ci95_half_width": {"n": 5, "total": 50_000}})
    assert est.status_code == 200, est.get_json()
    body = est.get_json()
    shares = body["shares"]
    assert body["epsilon_to_request"] == pytest.approx(shares["n"] + shares["total"], abs=1e-12)
    for a in body["aggregates"]:
        assert a["epsilon"] == shares[a["column"]]
    assert body["aggregates"][0]["accuracy"]["ci95_half_width"] <= 5
    assert body["aggregates"][1]["accuracy"]["ci95_half_width"] <= 50_000
    run = analyst.post(f"/v1/datasets/{ds}/sql", json={
        "sql": text, "epsilon": body["epsilon_to_request"], "shares": shares}).get_json()
    assert [a["epsilon"] for a in run["aggregates"]] == [shares["n"], shares["total"]]
    for ci in run["ci95"]:
        assert (ci[1][1] - ci[1][0]) / 2 <= 5

    refused = analyst.post(f"/v1/datasets/{ds}/sql/estimate", json={
        "sql": "SELECT COUNT(*) AS n, AVG(cost) AS m FROM patients", "target_ci95_half_width": 5})
    assert refused.status_code == 422
    assert refused.get_json()["details"]["aggregate"] == "m"
