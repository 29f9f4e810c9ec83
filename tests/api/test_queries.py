"""DP queries over HTTP: shapes, validation, replay, budgets, estimates, ledger."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from privacy_api.storage.models import Budget, LedgerEntry
from tests.helpers import patient_rows


@pytest.fixture
def setup(api):
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(400))
    resp = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 3, "delta": 1e-5})
    assert resp.status_code == 200
    return {"api": api, "admin": api.as_(admin), "owner": api.as_(owner),
            "analyst": api.as_(analyst), "aid": aid, "ds": ds}


def q(s, **spec):
    return s["analyst"].post(f"/v1/datasets/{s['ds']}/query", json=spec)


def spent(s) -> float:
    return s["analyst"].get("/v1/budgets").get_json()[0]["epsilon_spent"]


def ledger_sum(api) -> tuple[int, int]:
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as session:
        total = session.scalar(select(func.coalesce(func.sum(LedgerEntry.epsilon_charged), 0)))
        budget = session.scalar(select(Budget.epsilon_spent))
    return total, budget


SPECS = [
    {"aggregate": "count"},
    {"aggregate": "sum", "column": "cost"},
    {"aggregate": "mean", "column": "cost"},
    {"aggregate": "variance", "column": "age"},
    {"aggregate": "std", "column": "age"},
    {"aggregate": "quantile", "column": "age", "quantile": 0.5},
    {"aggregate": "histogram", "column": "sex"},
    {"aggregate": "histogram", "column": "cost", "bins": 5},
    {"aggregate": "count", "group_by": ["sex", "smoker"]},
    {"aggregate": "mean", "column": "cost", "group_by": ["sex"]},
    {"aggregate": "quantile", "column": "cost", "quantile": 0.9, "group_by": ["smoker"]},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_every_aggregate_answers_in_the_contract_shape(setup, spec):
    resp = q(setup, epsilon=0.1, **spec)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"query_id", "result", "epsilon_spent", "delta_spent", "replayed",
                         "accuracy", "budget"}
    assert body["epsilon_spent"] == pytest.approx(0.1) and not body["replayed"]
    if spec.get("group_by") or spec["aggregate"] == "histogram":
        # The headline describes the whole table; intervals are per group.
        assert {"noise_scale"} <= set(body["accuracy"]) <= {"noise_scale", "grid"}
        assert isinstance(body["result"], list) and body["result"]
        for cell in body["result"]:
            assert {"group", "value", "ci95"} <= set(cell) <= {"group", "value", "ci95",
                                                               "ci95_worst_case"}
            assert cell["ci95"][0] <= cell["ci95"][1]
    else:
        assert {"noise_scale", "ci95"} <= set(body["accuracy"]) <= {
            "noise_scale", "ci95", "ci95_worst_case", "grid"}
        lo, hi = body["accuracy"]["ci95"]
        assert lo <= hi
        assert isinstance(body["result"], int | float)


def test_gaussian_mechanism(setup):
    resp = q(setup, aggregate="mean", column="cost", mechanism="gaussian", epsilon=0.5, delta=1e-7)
    assert resp.status_code == 200, resp.get_json()
    assert 0 < resp.get_json()["epsilon_spent"] <= 0.5


def test_empty_filter_and_empty_groups_answer_with_noise_like_any_other(setup):
    empty = q(setup, aggregate="mean", column="cost", epsilon=0.1,
              where=[{"column": "age", "op": ">", "value": 1000}])
    full = q(setup, aggregate="mean", column="cost", epsilon=0.1)
    assert empty.status_code == full.status_code == 200
    assert set(empty.get_json()) == set(full.get_json())
    assert isinstance(empty.get_json()["result"], float)
    grouped = q(setup, aggregate="count", group_by=["sex", "smoker"], epsilon=0.1,
                where=[{"column": "sex", "op": "==", "value": "F"}])
    cells = grouped.get_json()["result"]
    assert [c["group"] for c in cells] == [
        {"sex": "F", "smoker": False}, {"sex": "F", "smoker": True},
        {"sex": "M", "smoker": False}, {"sex": "M", "smoker": True}]
    assert all(isinstance(c["value"], int) for c in cells)


@pytest.mark.parametrize("bad", [
    {"epsilon": 0}, {"epsilon": -1}, {"epsilon": "NaN"}, {"epsilon": "Infinity"},
    {"epsilon": 11}, {"epsilon": 0.1, "delta": 1e-6},
    {"epsilon": 0.1, "mechanism": "gaussian"}, {"epsilon": 0.1, "mechanism": "gaussian", "delta": 1},
    {"epsilon": 0.1, "mechanism": "gaussian", "delta": 1.5},
    {"epsilon": 0.1, "mechanism": "exponential"},
])
def test_bad_privacy_parameters_are_refused_and_cost_nothing(setup, bad):
    resp = q(setup, aggregate="count", **bad)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["code"] == "invalid_request"
    assert spent(setup) == 0


def test_nan_literal_is_refused(setup):
    resp = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query",
                                 data='{"aggregate": "count", "epsilon": NaN}',
                                 content_type="application/json")
    assert resp.status_code in (400, 422)
    assert spent(setup) == 0


@pytest.mark.parametrize("bad", [
    {"aggregate": "mean"}, {"aggregate": "sum", "column": "sex"},
    {"aggregate": "count", "column": "nope"}, {"aggregate": "quantile", "column": "age"},
    {"aggregate": "count", "group_by": ["cost"]}, {"aggregate": "count", "group_by": ["patient_id"]},
    {"aggregate": "count", "where": [{"column": "sex", "op": "==", "value": "X"}]},
    {"aggregate": "count", "where": [{"column": "sex", "op": "<", "value": "F"}]},
    {"aggregate": "count", "where": [{"column": "age", "op": "between", "value": [1]}]},
    {"aggregate": "histogram", "column": "cost"},
    {"aggregate": "count", "surprise": 1},
])
def test_invalid_queries_are_refused_and_cost_nothing(setup, bad):
    resp = q(setup, epsilon=0.1, **bad)
    assert resp.status_code == 422, resp.get_json()
    assert spent(setup) == 0


def test_replay_returns_the_same_answer_and_charges_once(setup):
    spec = {"aggregate": "mean", "column": "cost", "epsilon": 0.3,
            "where": [{"column": "smoker", "op": "==", "value": True}]}
    first = q(setup, **spec).get_json()
    second = q(setup, **{**spec, "epsilon": "0.30"}).get_json()
    assert second["replayed"] and second["epsilon_spent"] == 0
    assert second["result"] == first["result"] and second["accuracy"] == first["accuracy"]
    assert spent(setup) == pytest.approx(0.3)
    # new records make it a new query, charged again, with fresh noise
    up = setup["owner"].post(f"/v1/datasets/{setup['ds']}/records", json=patient_rows(3, start=900))
    assert up.status_code == 201
    third = q(setup, **spec).get_json()
    assert not third["replayed"] and third["epsilon_spent"] == pytest.approx(0.3)
    assert spent(setup) == pytest.approx(0.6)
    assert setup["analyst"].get("/v1/budgets").get_json()[0]["queries"] == 2
    total, budget = ledger_sum(setup["api"])
    assert total == budget


def test_over_budget_is_403_and_charges_nothing(setup):
    assert q(setup, aggregate="count", epsilon=2.5).status_code == 200
    resp = q(setup, aggregate="sum", column="cost", epsilon=0.6)
    assert resp.status_code == 403
    assert resp.get_json()["code"] == "budget_exhausted"
    assert spent(setup) == pytest.approx(2.5)
    assert q(setup, aggregate="sum", column="cost", epsilon=0.5).status_code == 200
    assert spent(setup) == pytest.approx(3.0)
    assert q(setup, aggregate="count", epsilon=1e-9).status_code == 403
    total, budget = ledger_sum(setup["api"])
    assert total == budget == 3 * 10**12


def test_exact_arithmetic_ten_tenths_make_one(setup):
    setup["admin"].put(f"/v1/budgets/{setup['aid']}/{setup['ds']}", json={"epsilon": 1})
    for i in range(10):
        resp = q(setup, aggregate="count", epsilon=0.1,
                 where=[{"column": "age", "op": ">=", "value": i}])
        assert resp.status_code == 200
    assert q(setup, aggregate="count", epsilon=1e-12).status_code == 403
    assert setup["analyst"].get("/v1/budgets").get_json()[0]["epsilon_remaining"] == 0


def test_frozen_budget_and_dataset_cap(setup, api):
    setup["admin"].put(f"/v1/budgets/{setup['aid']}/{setup['ds']}",
                       json={"epsilon": 3, "delta": 1e-5, "frozen": True})
    resp = q(setup, aggregate="count", epsilon=0.1)
    assert resp.status_code == 403 and resp.get_json()["details"]["frozen"]
    setup["admin"].put(f"/v1/budgets/{setup['aid']}/{setup['ds']}",
                       json={"epsilon": 3, "delta": 1e-5, "frozen": False})
    _, owner = api.user("o2", "owner")
    capped = api.as_(owner).post("/v1/datasets", json={
        "name": "capped", "epsilon_cap": 0.5,
        "columns": [{"name": "x", "type": "float", "lower": 0, "upper": 1}]}).get_json()["id"]
    ids = [api.user(f"an{i}", "analyst")[0] for i in range(2)]
    keys = []
    for uid in ids:
        with api.app.extensions["privacy_api"].db.transaction() as s:
            from privacy_api.services.users import issue_key
            from privacy_api.storage.models import User
            keys.append(issue_key(s, s.get(User, uid))[1])
        setup["admin"].put(f"/v1/budgets/{uid}/{capped}", json={"epsilon": 1})
    r1 = api.as_(keys[0]).post(f"/v1/datasets/{capped}/query", json={"aggregate": "count", "epsilon": 0.4})
    r2 = api.as_(keys[1]).post(f"/v1/datasets/{capped}/query", json={"aggregate": "count", "epsilon": 0.2})
    assert r1.status_code == 200
    assert r2.status_code == 403 and r2.get_json()["details"]["dataset_cap"]


def test_estimate_spends_nothing_and_reports_accuracy(setup):
    resp = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query/estimate",
                                 json={"aggregate": "count", "epsilon": 0.5})
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["epsilon"] == 0.5 and body["delta"] == 0
    assert body["accuracy"]["noise_scale"] > 0 and body["accuracy"]["ci95_half_width"] > 0
    mean = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query/estimate",
                                 json={"aggregate": "mean", "column": "cost", "epsilon": 0.5})
    assert mean.status_code == 200 and mean.get_json()["accuracy"]["components"]
    assert spent(setup) == 0
    assert setup["analyst"].get("/v1/queries").get_json() == []


def test_budget_admin_rules(setup):
    adm = setup["admin"]
    assert q(setup, aggregate="count", epsilon=1).status_code == 200
    resp = adm.put(f"/v1/budgets/{setup['aid']}/{setup['ds']}", json={"epsilon": 0.5})
    assert resp.status_code == 409
    assert adm.put(f"/v1/budgets/{setup['aid']}/{setup['ds']}", json={"epsilon": -1}).status_code == 422
    assert setup["analyst"].put(f"/v1/budgets/{setup['aid']}/{setup['ds']}",
                                json={"epsilon": 100}).status_code == 403
    assert setup["analyst"].get("/v1/budgets?user_id=1").status_code == 403
    rows = adm.get(f"/v1/budgets?user_id={setup['aid']}").get_json()
    assert rows[0]["epsilon_spent"] == 1 and rows[0]["queries"] == 1


def test_ledger_listing_and_access(setup, api):
    q(setup, aggregate="count", epsilon=0.1)
    q(setup, aggregate="count", epsilon=0.1)
    mine = setup["analyst"].get("/v1/queries").get_json()
    assert len(mine) == 2 and sum(e["replayed"] for e in mine) == 1
    assert all(e["answered"] for e in mine)
    assert len(setup["admin"].get("/v1/queries").get_json()) == 2
    _, other = api.user("ana2", "analyst")
    assert api.as_(other).get("/v1/queries").get_json() == []
    # no budget: the dataset does not exist for this analyst
    assert api.as_(other).post(f"/v1/datasets/{setup['ds']}/query",
                               json={"aggregate": "count", "epsilon": 0.1}).status_code == 404
    assert setup["owner"].post(f"/v1/datasets/{setup['ds']}/query",
                               json={"aggregate": "count", "epsilon": 0.1}).status_code == 403


def test_stored_answers_are_encrypted(setup):
    resp = q(setup, aggregate="sum", column="cost", epsilon=0.1).get_json()
    st = setup["api"].app.extensions["privacy_api"]
    with st.db.transaction() as s:
        token = s.scalar(select(LedgerEntry.answer_token))
    assert token.startswith(b"gAAAA")
    assert repr(resp["result"]).encode() not in token


def test_rdp_accounting_fits_more_gaussian_queries_than_basic_composition(setup):
    setup["admin"].put(f"/v1/budgets/{setup['aid']}/{setup['ds']}",
                       json={"epsilon": 1, "delta": 1e-5})
    assert q(setup, aggregate="count", epsilon=0.1).status_code == 200  # a pure query first
    answered = 0
    for i in range(40):
        resp = q(setup, aggregate="count", mechanism="gaussian", epsilon=0.1, delta=1e-7,
                 where=[{"column": "age", "op": ">=", "value": i}])
        if resp.status_code != 200:
            assert resp.get_json()["code"] == "budget_exhausted"
            break
        answered += 1
    # basic composition would stop at 9 more queries of epsilon 0.1 after the first one
    assert answered >= 15
    budget = setup["analyst"].get("/v1/budgets").get_json()[0]
    assert budget["epsilon_spent"] <= 1 and budget["delta_spent"] <= 1e-5
    total, spent_units = ledger_sum(setup["api"])
    assert total == spent_units


def test_quantile_intervals_say_which_guarantee_they_carry(setup):
    # a float column: a calibrated interval plus the one valid for every dataset
    cost = q(setup, aggregate="quantile", column="cost", quantile=0.5, epsilon=1).get_json()
    acc = cost["accuracy"]
    assert "ci95_worst_case" in acc
    assert acc["ci95_worst_case"][0] <= acc["ci95"][0] <= acc["ci95"][1] <= acc["ci95_worst_case"][1]
    # an int column (ties): only the interval valid for every dataset is reported
    age = q(setup, aggregate="quantile", column="age", quantile=0.5, epsilon=1).get_json()
    assert "ci95_worst_case" not in age["accuracy"]
    assert 0 <= age["accuracy"]["ci95"][0] <= age["result"] <= age["accuracy"]["ci95"][1] <= 100


def test_quick_and_full_charges_keep_every_total_in_step(setup, api):
    """Pure-ε queries take the one-statement charge, Gaussian ones the locked path; mixed on one
    budget, the budget, the dataset's running total and the ledger must agree exactly."""
    from privacy_api.storage.models import Dataset

    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as session:
        before = session.scalar(select(Budget.updated_at))
    specs = [{"aggregate": "count", "epsilon": 0.1},
             {"aggregate": "mean", "column": "cost", "mechanism": "gaussian", "epsilon": 0.2,
              "delta": 1e-7},
             {"aggregate": "sum", "column": "cost", "epsilon": 0.15},
             {"aggregate": "count", "group_by": ["sex"], "mechanism": "gaussian", "epsilon": 0.1,
              "delta": 1e-7},
             {"aggregate": "count", "epsilon": 0.05}]
    for spec in specs:
        assert q(setup, **spec).status_code == 200
    with st.db.transaction() as session:
        budget = session.scalar(select(Budget))
        dataset = session.get(Dataset, setup["ds"])
        charged = session.execute(select(func.sum(LedgerEntry.epsilon_charged),
                                         func.sum(LedgerEntry.delta_charged))).one()
    assert budget.queries == len(specs)
    assert (budget.epsilon_spent, budget.delta_spent) == tuple(charged)
    assert (dataset.epsilon_spent, dataset.delta_spent) == tuple(charged)
    assert budget.updated_at > before
    remaining = setup["analyst"].get("/v1/budgets").get_json()[0]["epsilon_remaining"]
    assert remaining == pytest.approx(3 - budget.epsilon_spent * 1e-12)
