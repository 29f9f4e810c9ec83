"""Renewable budgets: the period's spend resets at the boundary (an injected clock, no sleep),
the lifetime spend never does, a lifetime cap binds across periods, and the ledger verifies."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.conftest import make_app
from tests.helpers import Api, patient_rows
from tests.ledger.conftest import verify_cli


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def renewing(db_url: str) -> Any:
    clock = Clock(dt.datetime(2026, 1, 30, 23, 0, tzinfo=dt.UTC))
    app = make_app(db_url)
    app.extensions["privacy_api"].wall_clock = clock
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("own", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(100))
    yield api, admin, analyst, aid, ds, clock
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()


def _count(api: Api, key: str, ds: int, i: int, eps: float = 0.5) -> Any:
    # a new filter each time: a repeat would be a free replay
    return api.as_(key).post(f"/v1/datasets/{ds}/query", json={
        "aggregate": "count", "epsilon": eps, "where": [{"column": "age", "op": ">=", "value": i}]})


def _budget(api: Api, key: str, ds: int) -> dict[str, Any]:
    [b] = api.as_(key).get(f"/v1/budgets?dataset_id={ds}").get_json()
    return b


def test_create_app_takes_the_clock(sqlite_url: str):
    from privacy_api import create_app
    from tests.conftest import MASTER_KEY

    fixed = dt.datetime(2030, 5, 5, tzinfo=dt.UTC)
    app = create_app({"database_url": sqlite_url, "master_keys": [MASTER_KEY]},
                     clock=lambda: fixed)
    assert app.extensions["privacy_api"].clock() == fixed
    app.extensions["privacy_api"].db.dispose()


def test_a_monthly_budget_renews_across_the_boundary(renewing: Any, db_url: str):
    api, admin, analyst, aid, ds, clock = renewing
    put = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                             json={"epsilon": 1.0, "renewal_period": "monthly"})
    assert put.status_code == 200, put.get_json()
    b = put.get_json()
    assert b["renewal_period"] == "monthly"
    assert b["period_start"].startswith("2026-01-01T00:00:00")
    assert b["period_ends_at"].startswith("2026-02-01T00:00:00")
    assert _count(api, analyst, ds, 1).status_code == 200
    assert _count(api, analyst, ds, 2).status_code == 200  # the period's 1.0 is spent
    refused = _count(api, analyst, ds, 3)
    assert refused.status_code == 403
    body = refused.get_json()
    assert body["code"] == "budget_exhausted" and body["details"]["limit"] == "period"
    assert body["details"]["period_ends_at"].startswith("2026-02-01T00:00:00")

    clock.now = dt.datetime(2026, 2, 1, 0, 0, 1, tzinfo=dt.UTC)  # past the period's end
    shown = _budget(api, analyst, ds)  # before any charge, the new period already shows
    assert shown["epsilon_spent"] == 0 and shown["lifetime_epsilon_spent"] == 1.0
    ok = _count(api, analyst, ds, 4)
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["budget"]["epsilon_remaining"] == 0.5
    b = _budget(api, analyst, ds)
    assert b["epsilon_spent"] == 0.5 and b["epsilon_remaining"] == 0.5
    assert b["lifetime_epsilon_spent"] == 1.5  # the sum over both periods
    assert b["period_start"].startswith("2026-02-01T00:00:00")
    assert b["period_ends_at"].startswith("2026-03-01T00:00:00")
    result = verify_cli(db_url)
    assert result.exit_code == 0, result.output


def test_the_full_path_rolls_the_period_too(renewing: Any, db_url: str):
    """A Gaussian query takes `charge`, not the one-statement quick path."""
    api, admin, analyst, aid, ds, clock = renewing
    api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                       json={"epsilon": 1.0, "delta": 1e-5, "renewal_period": "daily"})
    spec = {"aggregate": "mean", "column": "cost", "mechanism": "gaussian", "epsilon": 1.0,
            "delta": 1e-6}
    statuses = []
    for i in range(10):  # RDP composes Gaussians below the sum: charge until refused
        spec["where"] = [{"column": "age", "op": ">=", "value": i}]
        statuses.append(api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec).status_code)
        if statuses[-1] == 403:
            break
    assert statuses[-1] == 403 and set(statuses[:-1]) == {200}, statuses
    first = _budget(api, analyst, ds)
    clock.now += dt.timedelta(hours=2)  # 01:00 on the 31st: a new day
    assert api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec).status_code == 200
    b = _budget(api, analyst, ds)
    assert b["period_start"].startswith("2026-01-31T00:00:00")
    assert 0 < b["epsilon_spent"] <= 1.0
    assert b["lifetime_epsilon_spent"] == pytest.approx(first["epsilon_spent"] + b["epsilon_spent"])
    assert verify_cli(db_url).exit_code == 0


def test_the_lifetime_cap_binds_across_periods(renewing: Any, db_url: str):
    api, admin, analyst, aid, ds, clock = renewing
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={
        "epsilon": 1.0, "renewal_period": "weekly", "lifetime_epsilon_cap": 1.5}).status_code == 200
    assert _count(api, analyst, ds, 1, eps=1.0).status_code == 200
    clock.now += dt.timedelta(days=7)
    refused = _count(api, analyst, ds, 2, eps=1.0)  # the period allows it, the lifetime does not
    assert refused.status_code == 403
    assert refused.get_json()["details"]["limit"] == "lifetime"
    assert refused.get_json()["details"]["lifetime_epsilon_remaining"] == 0.5
    b = _budget(api, analyst, ds)
    assert b["epsilon_remaining"] == 0.5  # the smaller of the period's 1.0 and the cap's 0.5
    assert _count(api, analyst, ds, 3, eps=0.5).status_code == 200
    assert _budget(api, analyst, ds)["lifetime_epsilon_spent"] == 1.5
    # a cap below the lifetime spend is refused, as a limit below the spend is
    low = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                             json={"epsilon": 1.0, "lifetime_epsilon_cap": 1.0})
    assert low.status_code == 409
    assert verify_cli(db_url).exit_code == 0


def test_renewal_fields_are_validated_and_kept(renewing: Any):
    api, admin, analyst, aid, ds, _ = renewing
    bad = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}",
                             json={"epsilon": 1.0, "renewal_period": "fortnightly"})
    assert bad.status_code == 422 and "renewal_period" in str(bad.get_json()["details"])
    api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 1.0, "renewal_period": "daily",
                                                        "lifetime_epsilon_cap": 5})
    kept = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 2.0}).get_json()
    assert kept["renewal_period"] == "daily" and kept["lifetime_epsilon_cap"] == 5.0
    off = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={
        "epsilon": 2.0, "renewal_period": "none", "lifetime_epsilon_cap": None}).get_json()
    assert off["renewal_period"] is None and off["period_ends_at"] is None
    assert off["lifetime_epsilon_cap"] is None
    # analysts cannot set budgets
    assert api.as_(analyst).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 9}).status_code == 403
