"""A multi-aggregate statement is one atomic charge: 50 concurrent 3-aggregate statements on
a budget that pays for exactly 10 of them, against real gunicorn workers (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from privacy_api.domain.units import eps_units
from privacy_api.storage.models import Budget, LedgerEntry
from tests.conftest import make_app
from tests.helpers import Api, patient_rows
from tests.server import gunicorn

# These tests race the ledger with one key, not the per-key cap on concurrent queries.
LEDGER_ONLY = {"PRIVACY_API_MAX_CONCURRENT_EXPENSIVE": "64"}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]


def test_fifty_concurrent_statements_are_charged_whole_or_not_at_all(db_url):
    app = make_app(db_url)
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(500))
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 1.0}).status_code == 200
    headers = {"Authorization": f"Bearer {analyst}"}
    with gunicorn(db_url, workers=3, threads=8, env=LEDGER_ONLY) as server:
        barrier = threading.Barrier(50)

        def one(i: int) -> int:
            body = {"sql": f"SELECT sex, COUNT(*) AS n, AVG(cost) AS m, SUM(age) AS s "
                           f"FROM patients WHERE age >= {i} GROUP BY sex", "epsilon": 0.1}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
                barrier.wait()
                return c.post(f"/v1/datasets/{ds}/sql", json=body).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(one, range(50)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(403) == 40, statuses
    st = app.extensions["privacy_api"]
    with st.db.transaction() as s:
        entries = s.scalars(select(LedgerEntry)).all()
        spent = s.scalar(select(Budget.epsilon_spent))
    assert len(entries) == 10
    assert sum(e.epsilon_charged for e in entries) == spent == 10**12
    for e in entries:
        # one entry per statement, its charge the exact sum of its three shares, and answered
        shares = [Decimal(ev[0]) * ev[3] for ev in e.privacy_events]
        assert len(e.plan["statement"]) == 3
        assert sum(eps_units(x) for x in shares) == e.epsilon_charged == eps_units("0.1")
        assert e.answer_token is not None
    st.db.dispose()
