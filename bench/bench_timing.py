"""Issue 10 benchmark: does latency depend on the data, and does accounting cost grow?

Run: `make bench` (all benchmarks) or `.venv/bin/python -m bench.bench_timing [--quick]`
(--quick: 100k rows only, 100 requests per kind, 2,000 earlier queries: a smoke run).

1. Timing vs the filter. synthetic_patients(n) for n = 100k and 1M is uploaded through the app
   into a temporary SQLite database (not timed) and served by gunicorn (1 worker, 4 threads,
   bench_queries.Server). Per kind, 300 distinct charged HTTP queries (ε varies by 1e-6) with a
   filter `age < t` matching ~40% of the rows and 300 matching ~60%, the four kinds' requests
   interleaved in one random order so that load from other processes on the shared machine
   hits both sides alike. Reported: p50 of each side and the two-sided Mann–Whitney U p-value
   (scipy.stats.mannwhitneyu) of 40% vs 60%; a p-value below 0.01 would be a leak. Beside it
   the unfiltered median's p50 (bench_queries' "median" row).
2. Gaussian charge latency vs the ledger's length, SQLite and PostgreSQL. One analyst has 1
   earlier query, another 10,000 (seeded by bulk-inserting Gaussian ledger rows and setting the
   budget row as the charges would have; not timed). Then 100 real HTTP Gaussian queries and
   100 estimates per analyst, interleaved, through gunicorn: p50 and p95.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.fernet import Fernet
from scipy.stats import mannwhitneyu
from sqlalchemy import create_engine, insert, select, update

from bench.bench_queries import Server, load_dataset
from bench.common import database, pg_available, print_table
from privacy_api.app.demo import synthetic_patients

EPSILON = 1.0
KINDS = {
    "quantile (median of cost)": {"aggregate": "quantile", "column": "cost", "quantile": 0.5},
    "histogram (cost, 20 bins)": {"aggregate": "histogram", "column": "cost", "bins": 20},
}


def _threshold(ages: np.ndarray, share: float) -> tuple[int, float]:
    """The t for which `age < t` matches closest to `share` of the rows, and that share."""
    shares = {t: float(np.mean(ages < t)) for t in range(0, 102)}
    t = min(shares, key=lambda k: abs(shares[k] - share))
    return t, shares[t]


def _post(client: httpx.Client, path: str, key: str, spec: dict[str, Any]) -> float:
    t = time.perf_counter()
    resp = client.post(path, json=spec, headers={"Authorization": f"Bearer {key}"})
    ms = (time.perf_counter() - t) * 1000
    assert resp.status_code == 200, resp.text
    return ms


def timing_table(n_rows: int, n_req: int) -> list[list[Any]]:
    rows = synthetic_patients(n_rows)
    ages = np.array([r["age"] for r in rows])
    (t40, s40), (t60, s60) = _threshold(ages, 0.4), _threshold(ages, 0.6)
    key = Fernet.generate_key()
    out: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp, database("sqlite") as url:
        ids = load_dataset(url, key, rows, ["timing", "median"])
        del rows
        server = Server(url, key, Path(tmp) / "gunicorn.log")
        try:
            server.wait_ready(timeout=600)
            path = f"/v1/datasets/{ids['dataset']}/query"
            analyst = ids["analysts"]["timing"]
            with httpx.Client(base_url=server.base, timeout=600) as client:
                # warm-up, untimed: cold load, then each kind's per-version artefacts
                for spec in KINDS.values():
                    _post(client, path, analyst, {**spec, "epsilon": 0.5})
                    _post(client, path, analyst, {**spec, "epsilon": 0.25,
                                                  "where": [{"column": "age", "op": "<",
                                                             "value": t40}]})
                plan = [(kind, side) for kind in KINDS for side in ("40%", "60%")
                        for _ in range(n_req)]
                random.Random(10).shuffle(plan)
                times: dict[tuple[str, str], list[float]] = {k: [] for k in set(plan)}
                for i, (kind, side) in enumerate(plan):
                    where = [{"column": "age", "op": "<", "value": t40 if side == "40%" else t60}]
                    spec = {**KINDS[kind], "where": where, "epsilon": EPSILON + i * 1e-6}
                    times[(kind, side)].append(_post(client, path, analyst, spec))
                median_ms = [_post(client, path, ids["analysts"]["median"],
                                   {**KINDS["quantile (median of cost)"],
                                    "epsilon": EPSILON + i * 1e-6}) for i in range(n_req // 3)]
        finally:
            server.stop()
    for kind in KINDS:
        a, b = times[(kind, "40%")], times[(kind, "60%")]
        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        out.append([f"{n_rows:,}", kind, f"{s40:.1%} vs {s60:.1%}", float(np.median(a)),
                    float(np.median(b)), p, "LEAK" if p < 0.01 else "no evidence of a leak"])
    out.append([f"{n_rows:,}", "median, no filter", "100%", float(np.median(median_ms)), "-", "-",
                f"{len(median_ms)} requests"])
    return out


# -- accounting ------------------------------------------------------------------------------
GAUSSIAN = {"aggregate": "count", "mechanism": "gaussian", "delta": 1e-9}


def seed_history(url: str, user_id: int, dataset_id: int, n: int) -> None:
    """n Gaussian queries in the ledger, as charged (bulk inserts; the budget row updated the
    way the charges would have left it)."""
    from mechanisms import privacy_events_for
    from privacy_api.domain.units import delta_units, eps_units
    from privacy_api.services import ledger
    from privacy_api.storage.models import Budget, LedgerEntry

    eps, delta = Decimal("0.01"), Decimal("1e-9")
    events = privacy_events_for("count", epsilon=eps, delta=delta, mechanism="gaussian")
    engine = create_engine(url)
    with engine.begin() as conn:
        rows = [{"id": str(uuid.uuid4()), "user_id": user_id, "dataset_id": dataset_id,
                 "dataset_version": 1, "fingerprint": uuid.uuid4().hex, "aggregate": "count",
                 "plan": {"aggregate": "count", "seed": i}, "mechanism": "gaussian",
                 "epsilon_requested": eps_units(eps), "delta_requested": delta_units(delta),
                 "epsilon_charged": 0, "delta_charged": 0,
                 "privacy_events": ledger.events_to_json(events), "replay_of": None,
                 "answer_token": None, "federation_id": None, "round_id": None}
                for i in range(n)]
        for i in range(0, n, 2000):
            conn.execute(insert(LedgerEntry), rows[i:i + 2000])
        budget = conn.execute(select(Budget).where(Budget.user_id == user_id,
                                                   Budget.dataset_id == dataset_id)).one()
        values: dict[str, Any] = {"queries": n}
        if hasattr(Budget, "gaussian_rho"):  # the stored composition (O(1) accounting)
            stored = ledger.StoredComposition()
            for _ in range(n):
                stored = stored.plus(events)
            spent = stored.spent(Decimal(budget.delta_total) * Decimal("1e-18"), (0, 0))
            values.update(basic_epsilon=stored.basic_epsilon, basic_delta=stored.basic_delta,
                          pure_epsilon=stored.pure_epsilon, pure_delta=stored.pure_delta,
                          gaussian_rho=str(stored.gaussian_rho))
        else:
            from mechanisms import total_spent
            total = total_spent(list(events) * n,
                                delta_budget=Decimal(budget.delta_total) * Decimal("1e-18"))
            spent = (eps_units(total.epsilon), delta_units(total.delta))
        values.update(epsilon_spent=spent[0], delta_spent=spent[1])
        conn.execute(update(Budget).where(Budget.id == budget.id).values(**values))
    engine.dispose()


def accounting_table(kind: str, n_history: int, n_req: int) -> list[list[Any]]:
    from privacy_api.storage.models import User

    key = Fernet.generate_key()
    with tempfile.TemporaryDirectory() as tmp, database(kind) as url:
        ids = load_dataset(url, key, synthetic_patients(2000), ["one", "many"])
        ds = ids["dataset"]
        engine = create_engine(url)
        with engine.connect() as conn:
            uid = {name: conn.execute(select(User.id).where(
                User.name == f"bench-analyst-{i}")).scalar_one()
                for i, name in enumerate(["one", "many"])}
        engine.dispose()
        # bench.load_dataset grants ε 1e6 and the default δ 0: give both a δ budget
        from bench.common import make_app
        app = make_app(url, master_keys=[key])
        st = app.extensions["privacy_api"]
        from privacy_api.services.budgets import set_budget
        with st.db.transaction() as s:
            for u in uid.values():
                set_budget(s, None, u, ds, epsilon=Decimal(10**6), delta=Decimal("1e-3"))
        st.cache.close()
        st.db.dispose()
        seed_history(url, uid["one"], ds, 1)
        seed_history(url, uid["many"], ds, n_history)
        server = Server(url, key, Path(tmp) / "gunicorn.log")
        charge: dict[str, list[float]] = {"one": [], "many": []}
        estimate: dict[str, list[float]] = {"one": [], "many": []}
        try:
            server.wait_ready(timeout=600)
            with httpx.Client(base_url=server.base, timeout=600) as client:
                query, est = f"/v1/datasets/{ds}/query", f"/v1/datasets/{ds}/query/estimate"
                for name in charge:  # warm-up
                    _post(client, query, ids["analysts"][name], {**GAUSSIAN, "epsilon": 0.5})
                order = [name for name in charge for _ in range(n_req)]
                random.Random(11).shuffle(order)
                for i, name in enumerate(order):
                    spec = {**GAUSSIAN, "epsilon": round(0.01 + i * 1e-6, 6)}
                    estimate[name].append(_post(client, est, ids["analysts"][name], spec))
                    charge[name].append(_post(client, query, ids["analysts"][name], spec))
        finally:
            server.stop()
    label = {"one": "1", "many": f"{n_history:,}"}
    return [[kind, label[name], float(np.median(charge[name])),
             float(np.percentile(charge[name], 95)), float(np.median(estimate[name])),
             float(np.percentile(estimate[name], 95))] for name in charge]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--only", choices=["timing", "accounting"], default=None)
    p.add_argument("--rows", type=int, nargs="+", default=None, help="dataset sizes to time")
    args = p.parse_args(argv)
    for name in ("httpx", "privacy_api.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sizes = args.rows or ([100_000] if args.quick else [100_000, 1_000_000])
    n_req = 100 if args.quick else 300
    n_history = 2000 if args.quick else 10_000
    if args.only in (None, "timing"):
        rows: list[list[Any]] = []
        for n in sizes:
            rows += timing_table(n, n_req)
        print_table(f"Latency vs the filter: {n_req} HTTP queries per side, interleaved at random "
                    "(gunicorn, 1 worker, SQLite)",
                    ["rows", "query", "rows matching", "p50 ms (40%)", "p50 ms (60%)",
                     "Mann-Whitney p", "verdict"], rows)
    if args.only in (None, "accounting"):
        rows = []
        for kind in ["sqlite", *(["postgresql"] if pg_available() else [])]:
            rows += accounting_table(kind, n_history, 100 if not args.quick else 40)
        print_table("Gaussian charge (HTTP query) and estimate latency vs earlier queries "
                    "(gunicorn, 1 worker)",
                    ["database", "earlier queries", "charge p50 ms", "charge p95 ms",
                     "estimate p50 ms", "estimate p95 ms"], rows)


if __name__ == "__main__":
    main()
