"""Dashboard test helpers: a signed-in browser-like client and direct ledger/federation rows."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from privacy_api.domain.units import delta_units, eps_units
from privacy_api.storage.models import Budget, Dataset, LedgerEntry
from tests.helpers import PATIENTS_SCHEMA, Api

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


class Dash:
    """A cookie-carrying client that sends the CSRF token of the last page it rendered."""

    def __init__(self, app: Any, base_url: str = "http://localhost") -> None:
        self.app = app
        self.client = app.test_client()
        self.base_url = base_url
        self.token: str | None = None

    def get(self, path: str, **kw: Any) -> Any:
        resp = self.client.get(path, base_url=self.base_url, **kw)
        body = resp.get_data(as_text=True)
        resp.close()  # static files are streamed from an open file
        match = TOKEN_RE.search(body)
        if match:
            self.token = match.group(1)
        return resp

    def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True,
             **kw: Any) -> Any:
        if csrf and self.token is None:
            self.get("/admin/signin")
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.token
        resp = self.client.post(path, data=form, base_url=self.base_url, **kw)
        match = TOKEN_RE.search(resp.get_data(as_text=True))
        if match:
            self.token = match.group(1)
        return resp

    def sign_in(self, key: str) -> Any:
        self.get("/admin/signin")
        resp = self.post("/admin/signin", {"api_key": key})
        if resp.status_code == 303:
            self.get("/admin")  # signing in resets the session, so fetch a fresh token
        return resp


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    """An admin, an owner, two analysts and two datasets (no records needed for the UI)."""
    admin_id, admin = api.user("root", "admin")
    _, owner = api.user("olga", "owner")
    ana_id, ana = api.user("ana", "analyst")
    bob_id, bob = api.user("bob", "analyst")
    ds1 = api.dataset(owner)
    ds2 = api.dataset(owner, {**PATIENTS_SCHEMA, "name": "visits", "epsilon_cap": 5})
    dash = Dash(api.app)
    assert dash.sign_in(admin).status_code == 303
    return {"api": api, "dash": dash, "admin": admin, "admin_id": admin_id, "owner": owner,
            "ana_id": ana_id, "ana": ana, "bob_id": bob_id, "bob": bob, "ds1": ds1, "ds2": ds2}


def grant(api: Api, admin_key: str, user_id: int, ds: int, epsilon: float,
          delta: float = 0) -> None:
    resp = api.as_(admin_key).put(f"/v1/budgets/{user_id}/{ds}",
                                  json={"epsilon": epsilon, "delta": delta})
    assert resp.status_code == 200, resp.get_json()


def add_ledger(app: Any, user_id: int, ds: int, epsilon: str, *, at: dt.datetime,
               aggregate: str = "count", plan: dict[str, Any] | None = None,
               replay: bool = False, delta: str = "0") -> str:
    """A ledger row as the query service writes it, with its budget's spent kept in step."""
    st = app.extensions["privacy_api"]
    entry_id = str(uuid.uuid4())
    eps_u = 0 if replay else eps_units(epsilon)
    delta_u = 0 if replay else delta_units(delta)
    with st.db.transaction() as session:
        session.add(LedgerEntry(
            id=entry_id, user_id=user_id, dataset_id=ds, dataset_version=1,
            fingerprint=uuid.uuid4().hex, aggregate=aggregate,
            plan=plan or {"aggregate": aggregate, "column": None, "where": [], "group_by": []},
            mechanism="laplace", epsilon_requested=eps_units(epsilon),
            delta_requested=delta_units(delta), epsilon_charged=eps_u, delta_charged=delta_u,
            replay_of=str(uuid.uuid4()) if replay else None, created_at=at,
        ))
        budget = session.scalars(
            select(Budget).where(Budget.user_id == user_id, Budget.dataset_id == ds)).one()
        budget.epsilon_spent += eps_u
        budget.delta_spent += delta_u
        budget.queries += 1
        dataset = session.get(Dataset, ds)
        assert dataset is not None
        dataset.epsilon_spent += eps_u
        dataset.delta_spent += delta_u
    return entry_id


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
