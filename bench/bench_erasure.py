"""Issue 15 benchmark: SQLite secure_delete's cost on uploads, erasure and dummy-query latency.

Run: `.venv/bin/python -m bench.bench_erasure [--rows N] [--repeats K]`. Uploads alternate
secure_delete ON (the service's setting) and OFF (turned off by a later connect hook), on
fresh databases, so machine load hits both alike; the table shows the median of each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import orjson
from sqlalchemy import event

from bench.common import database, make_app, pg_available, print_table
from privacy_api.app.demo import DEMO_COLUMNS, synthetic_patients
from privacy_api.services.users import create_user


def _client(app: Any) -> tuple[Any, dict[str, str], dict[str, str], int]:
    st = app.extensions["privacy_api"]
    with st.db.transaction() as s:
        owner, okey = create_user(s, "owner", "owner")
        _, akey = create_user(s, "admin", "admin")
        analyst, nkey = create_user(s, "ana", "analyst")
        analyst_id = analyst.id
    c = app.test_client()
    oh, ah = {"Authorization": f"Bearer {okey}"}, {"Authorization": f"Bearer {akey}"}
    nh = {"Authorization": f"Bearer {nkey}"}
    ds = c.post("/v1/datasets", headers=oh, json={
        "name": "patients", "columns": DEMO_COLUMNS,
        "privacy_unit": {"column": "patient_id", "max_rows": 1}}).get_json()["id"]
    c.put(f"/v1/budgets/{analyst_id}/{ds}", headers=ah, json={"epsilon": 10})
    return c, oh, nh, ds


def _upload_seconds(kind: str, body: bytes, secure_delete: bool) -> float:
    with database(kind) as url:
        app = make_app(url, decrypt_workers=1)
        if not secure_delete:
            @event.listens_for(app.extensions["privacy_api"].db.engine, "connect")
            def _off(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA secure_delete=OFF")
            app.extensions["privacy_api"].db.engine.dispose()
        c, oh, _, ds = _client(app)
        t = time.perf_counter()
        resp = c.post(f"/v1/datasets/{ds}/records", headers={**oh, "Content-Type": "application/json"},
                      data=body)
        elapsed = time.perf_counter() - t
        assert resp.status_code == 201, resp.get_json()
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()
        return elapsed


def _erasure_and_dummy(kind: str, body: bytes, rows: int) -> list[list[Any]]:
    with database(kind) as url:
        app = make_app(url, decrypt_workers=1)
        c, oh, nh, ds = _client(app)
        c.post(f"/v1/datasets/{ds}/records", headers={**oh, "Content-Type": "application/json"},
               data=body)
        unit = orjson.loads(body)[rows // 2]["patient_id"]
        t = time.perf_counter()
        out = c.delete(f"/v1/datasets/{ds}/units/{unit}", headers=oh).get_json()
        erase = time.perf_counter() - t
        assert out["deleted"] >= 1, out
        spec = {"aggregate": "mean", "column": "cost", "group_by": ["region"], "epsilon": 1,
                "dummy": True, "dummy_rows": 10_000}
        c.post(f"/v1/datasets/{ds}/query", headers=nh, json=spec)  # warm
        times = []
        for _ in range(5):
            t = time.perf_counter()
            assert c.post(f"/v1/datasets/{ds}/query", headers=nh, json=spec).status_code == 200
            times.append(time.perf_counter() - t)
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()
    return [[kind, "erase one unit (decrypt scan + delete + checkpoint)", rows, erase * 1000],
            [kind, "dummy query, 10,000 dummy rows, mean by region (median of 5)", 10_000,
             statistics.median(times) * 1000]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    body = orjson.dumps(list(synthetic_patients(args.rows, seed=1)))
    on, off = [], []
    for _ in range(args.repeats):
        on.append(_upload_seconds("sqlite", body, True))
        off.append(_upload_seconds("sqlite", body, False))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print_table(f"SQLite upload of {args.rows:,} rows (JSON), median of {args.repeats}",
                ["secure_delete", "seconds", "rows/s"],
                [["ON (service)", m_on, args.rows / m_on], ["OFF", m_off, args.rows / m_off]])
    rows = _erasure_and_dummy("sqlite", body, args.rows)
    if pg_available():
        rows += _erasure_and_dummy("postgresql", body, args.rows)
    print_table("Erasure and dummy queries", ["database", "operation", "rows", "ms"], rows)


if __name__ == "__main__":
    main()
