"""Exploration data that costs nothing (issue 15, part 2): dummy rows from the public schema
alone, and queries/statements with "dummy": true that are free and never in the ledger."""

from __future__ import annotations

from typing import Any

from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows

VISITS_SCHEMA: dict[str, Any] = {
    "name": "visits",
    "columns": [
        {"name": "patient", "type": "id"},
        {"name": "age", "type": "int", "lower": 18, "upper": 90},
        {"name": "ward", "type": "category", "categories": ["a", "b", "c"]},
        {"name": "cost", "type": "float", "lower": -5, "upper": 250.5},
        {"name": "smoker", "type": "bool"},
        {"name": "visit", "type": "id"},
    ],
    "privacy_unit": {"column": "patient", "max_rows": 4},
}


def _env(api: Api, *, budget: float = 1.0) -> dict[str, Any]:
    _, admin = api.user("root", "admin")
    _, owner = api.user("owner", "owner")
    aid, analyst = api.user("ana", "analyst")
    _, stranger = api.user("bob", "analyst")
    ds = api.dataset(owner, PATIENTS_SCHEMA, patient_rows(5))
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": budget}).status_code == 200
    return {"admin": api.as_(admin), "owner": api.as_(owner), "analyst": api.as_(analyst),
            "stranger": api.as_(stranger), "ds": ds, "aid": aid}


def test_dummy_rows_follow_the_public_schema_and_the_seed(api: Api) -> None:
    _, owner = api.user("owner", "owner")
    ds = api.dataset(owner, VISITS_SCHEMA)  # no records at all: the rows need none
    o = api.as_(owner)
    resp = o.get(f"/v1/datasets/{ds}/dummy?rows=2000&seed=7")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["dummy"] is True and body["seed"] == 7 and body["rows"] == 2000
    records = body["records"]
    assert len(records) == 2000
    assert all(set(r) == {c["name"] for c in VISITS_SCHEMA["columns"]} for r in records)
    ages = [r["age"] for r in records]
    assert all(isinstance(a, int) and 18 <= a <= 90 for a in ages)
    assert {18, 90} <= set(ages)  # the bounds are reachable (each has p=1/73 per row)
    costs = [r["cost"] for r in records]
    assert all(isinstance(c, float) and -5 <= c <= 250.5 for c in costs)
    assert {r["ward"] for r in records} == {"a", "b", "c"}
    assert {r["smoker"] for r in records} == {True, False}
    per_unit: dict[str, int] = {}
    for r in records:
        assert r["patient"].startswith("dummy-unit-")
        per_unit[r["patient"]] = per_unit.get(r["patient"], 0) + 1
    assert max(per_unit.values()) <= 4 and len(per_unit) < 2000  # units span several rows
    assert len({r["visit"] for r in records}) == 2000
    assert o.get(f"/v1/datasets/{ds}/dummy?rows=2000&seed=7").get_json() == body
    other = o.get(f"/v1/datasets/{ds}/dummy?rows=2000&seed=8").get_json()
    assert other["records"] != records
    assert len(o.get(f"/v1/datasets/{ds}/dummy").get_json()["records"]) == 1000  # default


def test_dummy_rows_are_capped_and_visible_only_to_who_may_see_the_dataset(api: Api) -> None:
    env = _env(api)
    ds = env["ds"]
    for bad in ("rows=10001", "rows=0", "seed=-1", "rows=abc", "colour=red"):
        resp = env["owner"].get(f"/v1/datasets/{ds}/dummy?{bad}")
        assert resp.status_code in (400, 422) and resp.get_json()["code"] == "invalid_request"
    assert env["owner"].get(f"/v1/datasets/{ds}/dummy?rows=10000").status_code == 200
    assert env["analyst"].get(f"/v1/datasets/{ds}/dummy?rows=10").status_code == 200
    assert env["admin"].get(f"/v1/datasets/{ds}/dummy?rows=10").status_code == 200
    assert env["stranger"].get(f"/v1/datasets/{ds}/dummy?rows=10").status_code == 404
    assert api.as_(None).get(f"/v1/datasets/{ds}/dummy").status_code == 401


def _ledger(env: dict[str, Any]) -> list[dict[str, Any]]:
    resp = env["analyst"].get(f"/v1/queries?dataset_id={env['ds']}")
    assert resp.status_code == 200
    out: list[dict[str, Any]] = resp.get_json()
    return out


def _budget(env: dict[str, Any]) -> dict[str, Any]:
    [budget] = env["analyst"].get(f"/v1/budgets?dataset_id={env['ds']}").get_json()
    out: dict[str, Any] = budget
    return out


def test_dummy_queries_are_free_marked_and_absent_from_the_ledger(api: Api) -> None:
    env = _env(api, budget=0.5)
    ds, a = env["ds"], env["analyst"]
    spent = a.post(f"/v1/datasets/{ds}/query", json={"aggregate": "count", "epsilon": 0.5})
    assert spent.status_code == 200 and "dummy" not in spent.get_json()
    assert a.post(f"/v1/datasets/{ds}/query",
                  json={"aggregate": "sum", "column": "cost", "epsilon": 0.1}).status_code == 403
    # the budget is exhausted, yet exploration still runs, at any ε the service allows
    body = {"aggregate": "count", "epsilon": 10, "dummy": True, "dummy_rows": 3000}
    resp = a.post(f"/v1/datasets/{ds}/query", json=body)
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["dummy"] is True and out["query_id"] is None and out["replayed"] is False
    assert out["epsilon_spent"] == 0 and out["delta_spent"] == 0
    assert out["budget"]["epsilon_remaining"] == 0
    # answered on 3000 dummy rows, not the 5 real ones (noise at ε=10 is within ±10 w.p. ~1-1e-43)
    assert abs(out["result"] - 3000) <= 10
    grouped = a.post(f"/v1/datasets/{ds}/query", json={
        "aggregate": "mean", "column": "cost", "group_by": ["sex"], "epsilon": 5,
        "mechanism": "gaussian", "delta": 1e-6, "dummy": True, "dummy_seed": 42}).get_json()
    assert grouped["dummy"] is True and [g["group"] for g in grouped["result"]] == [
        {"sex": "F"}, {"sex": "M"}]
    # a repeat is not a replay and is not stored
    again = a.post(f"/v1/datasets/{ds}/query", json=body).get_json()
    assert again["replayed"] is False and again["query_id"] is None
    assert len(_ledger(env)) == 1
    budget = _budget(env)
    assert budget["epsilon_spent"] == 0.5 and budget["queries"] == 1
    # validation is the same as for a real query; nothing is written either way
    for bad in ({"aggregate": "mean", "epsilon": 1, "dummy": True},
                {"aggregate": "count", "epsilon": 11, "dummy": True},
                {"aggregate": "count", "epsilon": 1, "dummy": True, "dummy_rows": 10_001},
                {"aggregate": "count", "epsilon": 1, "dummy_seed": 4}):
        resp = a.post(f"/v1/datasets/{ds}/query", json=bad)
        assert resp.status_code == 422, (bad, resp.get_json())
    assert env["stranger"].post(f"/v1/datasets/{ds}/query",
                                json={**body, "epsilon": 1}).status_code == 404
    assert len(_ledger(env)) == 1


def test_dummy_statements_are_free_and_absent_from_the_ledger(api: Api) -> None:
    env = _env(api, budget=0.2)
    ds, a = env["ds"], env["analyst"]
    statement = ("SELECT sex, COUNT(*) AS n, AVG(cost) AS mean_cost FROM patients "
                 "WHERE age >= 30 GROUP BY sex ORDER BY sex")
    resp = a.post(f"/v1/datasets/{ds}/sql", json={"sql": statement, "epsilon": 5,
                                                  "dummy": True, "dummy_seed": 1})
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["dummy"] is True and out["query_id"] is None and out["epsilon_spent"] == 0
    assert out["columns"] == ["sex", "n", "mean_cost"] and [r[0] for r in out["rows"]] == ["F", "M"]
    assert [x["epsilon"] for x in out["aggregates"]] == [2.5, 2.5]
    # 1000 dummy rows, ages uniform on 0..100: ~70% are >= 30 (far from the 5 real rows)
    assert sum(r[1] for r in out["rows"]) > 500
    assert _ledger(env) == [] and _budget(env)["epsilon_spent"] == 0
    # over the budget for real, free on dummy data
    real = a.post(f"/v1/datasets/{ds}/sql", json={"sql": statement, "epsilon": 5})
    assert real.status_code == 403 and real.get_json()["code"] == "budget_exhausted"
    bad = a.post(f"/v1/datasets/{ds}/sql", json={"sql": "SELECT * FROM patients", "epsilon": 1,
                                                 "dummy": True})
    assert bad.status_code == 422
    assert _ledger(env) == []
