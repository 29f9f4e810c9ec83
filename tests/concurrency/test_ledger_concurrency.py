"""The ledger never overspends and never loses a charge: many processes, threads, SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select, update

from privacy_api.domain.units import delta_units
from privacy_api.storage.models import Budget, LedgerEntry
from tests.conftest import make_app
from tests.helpers import Api, patient_rows
from tests.ledger.conftest import verify_cli
from tests.server import gunicorn

# These tests race the ledger with one key, not the per-key cap on concurrent queries.
LEDGER_ONLY = {"PRIVACY_API_MAX_CONCURRENT_EXPENSIVE": "64"}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]


def _prepare(db_url: str, epsilon: float) -> tuple[Api, str, int]:
    app = make_app(db_url)
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(500))
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": epsilon}).status_code == 200
    return api, analyst, ds


def _ledger(api: Api) -> tuple[int, int, set[str], set[str]]:
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        charged = s.scalar(select(func.coalesce(func.sum(LedgerEntry.epsilon_charged), 0)))
        spent = s.scalar(select(Budget.epsilon_spent))
        ids = set(s.scalars(select(LedgerEntry.id).where(LedgerEntry.epsilon_charged > 0)))
        answered = set(s.scalars(select(LedgerEntry.id).where(LedgerEntry.answer_token.is_not(None))))
    return charged, spent, ids, answered


def test_fifty_concurrent_queries_on_a_budget_of_ten(db_url):
    api, analyst, ds = _prepare(db_url, 1.0)
    headers = {"Authorization": f"Bearer {analyst}"}
    with gunicorn(db_url, workers=3, threads=8, env=LEDGER_ONLY) as server:
        barrier = threading.Barrier(50)

        def one(i: int) -> int:
            spec = {"aggregate": "count", "epsilon": 0.1,
                    "where": [{"column": "age", "op": ">=", "value": i}]}
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
                barrier.wait()
                return c.post(f"/v1/datasets/{ds}/query", json=spec).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(one, range(50)))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(403) == 40, statuses
    charged, spent, ids, answered = _ledger(api)
    assert charged == spent == 10**12  # exactly 1.0 in 1e-12 units
    assert len(ids) == 10 and ids == answered
    assert verify_cli(db_url).exit_code == 0  # the refusals left no entry and no gap
    api.app.extensions["privacy_api"].db.dispose()


def test_fifty_concurrent_charges_keep_one_unbroken_chain(db_url):
    """Quick-path (Laplace), full-path (Gaussian) charges and replays race on one budget; each
    must read the chain's head and move it under the same lock as its charge."""
    api, analyst, ds = _prepare(db_url, 1000.0)
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:  # the Gaussian queries need a delta budget too
        s.execute(update(Budget).values(delta_total=delta_units("1e-4")))
    headers = {"Authorization": f"Bearer {analyst}"}
    repeat = {"aggregate": "count", "epsilon": 0.1}
    assert api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=repeat).status_code == 200
    with gunicorn(db_url, workers=3, threads=8, env=LEDGER_ONLY) as server:
        barrier = threading.Barrier(50)

        def one(i: int) -> int:
            where = [{"column": "age", "op": ">=", "value": i}]
            spec = (repeat if i % 10 == 0 else
                    {"aggregate": "mean", "column": "cost", "mechanism": "gaussian",
                     "epsilon": 0.5, "delta": 1e-7, "where": where} if i % 10 == 1 else
                    {"aggregate": "count", "epsilon": 0.1, "where": where})
            with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
                barrier.wait()
                return c.post(f"/v1/datasets/{ds}/query", json=spec).status_code

        with ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(one, range(50)))
    assert statuses == [200] * 50, statuses
    charged, spent, ids, _ = _ledger(api)
    assert charged == spent and len(ids) == 1 + 45
    with st.db.transaction() as s:
        seqs = sorted(s.scalars(select(LedgerEntry.chain_seq)))
        assert seqs == list(range(1, 52))  # 46 charges and 5 replays, no gap, no repeat
        assert s.scalar(select(Budget.ledger_count)) == 51
    result = verify_cli(db_url)
    assert result.exit_code == 0, result.output
    st.db.dispose()


def test_sigkilled_workers_never_release_an_answer_without_a_charge(db_url):
    api, analyst, ds = _prepare(db_url, 10_000.0)
    headers = {"Authorization": f"Bearer {analyst}"}
    released: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    rng = random.Random(2026)

    with gunicorn(db_url, workers=2, threads=4, env=LEDGER_ONLY) as server:
        def client(seed: int) -> None:
            i = 0
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
                while not stop.is_set():
                    i += 1
                    spec = {"aggregate": "mean", "column": "cost", "epsilon": 0.01,
                            "where": [{"column": "age", "op": ">=", "value": (seed * 100_000 + i) / 1e6}]}
                    try:
                        r = c.post(f"/v1/datasets/{ds}/query", json=spec)
                    except httpx.HTTPError:
                        continue  # the worker died mid-request: that answer is lost, fine
                    if r.status_code == 200:
                        released.append(r.json()["query_id"])
                    elif r.status_code < 500:
                        errors.append(r.text)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        kills = 0
        deadline = time.monotonic() + 60
        while kills < 6 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 1.2))
            pids = server.worker_pids()
            if pids and len(released) > kills * 3:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        # the service recovered by itself: a fresh query still works
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
            from tests.server import wait_ready
            wait_ready(server.url)
            assert c.post(f"/v1/datasets/{ds}/query",
                          json={"aggregate": "count", "epsilon": 0.5}).status_code == 200
    assert kills >= 3, "the test did not manage to kill workers"
    assert not errors, errors[:3]
    assert len(released) >= 10
    charged, spent, ids, answered = _ledger(api)
    assert set(released) <= ids, "an answer was released without a committed charge"
    assert charged == spent, "the budget's spent differs from its ledger"
    assert answered <= ids
    result = verify_cli(db_url)  # SIGKILLed charges were rolled back whole: chain intact
    assert result.exit_code == 0, result.output
    api.app.extensions["privacy_api"].db.dispose()
