"""A bounded load and fault driver over loopback: several gunicorn instances on one PostgreSQL.

Used by `make load` (bench/bench_load.py) and by the fault tests. It seeds analysts with
budgets, sends a mix of new queries, estimates and replays from a fixed number of threads,
optionally SIGKILLs workers and restarts PostgreSQL while it runs, and then audits the ledger:
every budget's spent equals the sum of its ledger charges and none exceeds its cap, and every
answer a client received has a committed charge.
"""

from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
from sqlalchemy import func, select

from privacy_api.storage.models import Budget, LedgerEntry


@dataclass
class LoadReport:
    requests: int = 0
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    released: list[str] = field(default_factory=list)
    kills: int = 0
    pg_restarts: int = 0
    audit: dict[str, Any] = field(default_factory=dict)

    def percentiles(self, kind: str) -> tuple[float, float, float]:
        arr = np.array(self.latencies[kind]) * 1000
        if not len(arr):
            return (float("nan"),) * 3
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        return float(p50), float(p95), float(p99)


def restart_postgres() -> bool:
    """Restart the local PostgreSQL cluster (needs root and Debian's pg_ctlcluster)."""
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster"):
        return False
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return False
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]
    return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0


def seed(app: Any, analysts: int, rows: int, epsilon_total: float) -> tuple[int, list[tuple[int, str]]]:
    from privacy_api.app.demo import DEMO_COLUMNS, synthetic_patients
    from privacy_api.services.users import create_user

    st = app.extensions["privacy_api"]
    client = app.test_client()
    with st.db.transaction() as s:
        _, admin = create_user(s, "load-admin", "admin")
        _, owner = create_user(s, "load-owner", "owner")
        people = [create_user(s, f"load-analyst-{i}", "analyst") for i in range(analysts)]
        keys = [(u.id, k) for u, k in people]
    h = {"Authorization": f"Bearer {owner}"}
    ds = client.post("/v1/datasets", json={"name": "load", "columns": DEMO_COLUMNS,
                                           "privacy_unit": {"column": "patient_id", "max_rows": 3}},
                     headers=h).get_json()["id"]
    r = client.post(f"/v1/datasets/{ds}/records", data=orjson.dumps(synthetic_patients(rows)),
                    content_type="application/json", headers=h)
    assert r.status_code == 201, r.get_json()
    ah = {"Authorization": f"Bearer {admin}"}
    for uid, _ in keys:
        assert client.put(f"/v1/budgets/{uid}/{ds}", json={"epsilon": epsilon_total},
                          headers=ah).status_code == 200
    return ds, keys


def _plan(analysts: list[tuple[int, str]], per_analyst: int,
          seed: int) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Interleave analysts; per analyst: new queries, estimates and replays (~50/25/25)."""
    rng = random.Random(seed)
    aggregates = [
        {"aggregate": "count"},
        {"aggregate": "mean", "column": "cost"},
        {"aggregate": "count", "group_by": ["region"]},
        {"aggregate": "sum", "column": "length_of_stay"},
    ]
    last: dict[int, dict[str, Any]] = {}
    for i in range(per_analyst):
        for uid, key in analysts:
            roll = rng.random()
            if roll < 0.25 and uid in last:
                yield "replay", key, last[uid]
                continue
            spec = {**aggregates[i % len(aggregates)], "epsilon": 0.25,
                    "where": [{"column": "age", "op": ">=", "value": rng.randrange(0, 90)},
                              {"column": "cost", "op": "<=", "value": 10_000 + i}]}
            if roll < 0.5:
                yield "estimate", key, spec
            else:
                last[uid] = spec
                yield "query", key, spec


def run_load(urls: list[str], dataset_id: int, analysts: list[tuple[int, str]], *,
             per_analyst: int, concurrency: int, servers: list[Any] | None = None,
             kill_every: float | None = None, restart_pg_at: float | None = None,
             seed_value: int = 7) -> LoadReport:
    report = LoadReport()
    work: queue.Queue[tuple[str, str, dict[str, Any]] | None] = queue.Queue(maxsize=concurrency * 4)
    lock = threading.Lock()
    done = threading.Event()

    def producer() -> None:
        for item in _plan(analysts, per_analyst, seed_value):
            work.put(item)
        for _ in range(concurrency):
            work.put(None)

    def consumer(idx: int) -> None:
        with ExitStack() as stack:
            clients = [stack.enter_context(httpx.Client(base_url=u, timeout=60)) for u in urls]
            n = idx
            while (item := work.get()) is not None:
                kind, key, spec = item
                path = f"/v1/datasets/{dataset_id}/query" + ("/estimate" if kind == "estimate" else "")
                client = clients[n % len(clients)]
                n += 1
                t = time.perf_counter()
                try:
                    resp = client.post(path, json=spec, headers={"Authorization": f"Bearer {key}"})
                except httpx.HTTPError:
                    with lock:
                        report.transport_errors += 1
                        report.requests += 1
                    continue
                dt = time.perf_counter() - t
                with lock:
                    report.requests += 1
                    report.statuses[f"{kind} {resp.status_code}"] += 1
                    if resp.status_code < 500:
                        report.latencies[kind].append(dt)
                    if kind != "estimate" and resp.status_code == 200:
                        body = resp.json()
                        if not body["replayed"]:
                            report.released.append(body["query_id"])

    def saboteur() -> None:
        rng = random.Random(seed_value)
        start = last_kill = time.monotonic()
        restarted = False
        # Wake often and act when due: the load may finish in a few seconds, and a fault
        # scheduled at a coarse wake-up could then never happen.
        while not done.wait(0.1):
            now = time.monotonic()
            if kill_every and servers and now - last_kill >= kill_every:
                last_kill = now
                server = rng.choice(servers)
                pids = server.worker_pids()
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    report.kills += 1
            if restart_pg_at is not None and not restarted and now - start > restart_pg_at:
                restarted = True
                if restart_postgres():
                    report.pg_restarts += 1

    threads = [threading.Thread(target=producer, daemon=True)]
    threads += [threading.Thread(target=consumer, args=(i,), daemon=True) for i in range(concurrency)]
    sab = threading.Thread(target=saboteur, daemon=True)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if kill_every or restart_pg_at is not None:
        sab.start()
    for t in threads:
        t.join()
    done.set()
    report.seconds = time.perf_counter() - t0
    if sab.is_alive():
        sab.join()  # a PostgreSQL restart in progress finishes before we report
    return report


def audit(app: Any, report: LoadReport) -> dict[str, Any]:
    """Every budget: spent == sum of its ledger charges <= total; every answer charged."""
    st = app.extensions["privacy_api"]
    with st.db.sessions() as s:
        budgets = s.scalars(select(Budget)).all()
        sums = dict(s.execute(
            select(LedgerEntry.user_id, func.sum(LedgerEntry.epsilon_charged))
            .where(LedgerEntry.dataset_id.is_not(None)).group_by(LedgerEntry.user_id)).all())
        charged_ids = set(s.scalars(select(LedgerEntry.id).where(LedgerEntry.epsilon_charged > 0)))
    mismatched = [b.user_id for b in budgets if b.epsilon_spent != (sums.get(b.user_id) or 0)]
    over = [b.user_id for b in budgets if b.epsilon_spent > b.epsilon_total]
    uncharged = [q for q in report.released if q not in charged_ids]
    exhausted = sum(1 for b in budgets if b.epsilon_spent == b.epsilon_total)
    result = {"budgets": len(budgets), "spent_equals_ledger": not mismatched,
              "none_over_cap": not over, "answers_without_charge": len(uncharged),
              "budgets_exhausted": exhausted}
    report.audit = result
    return result
