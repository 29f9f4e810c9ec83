"""Issue 15 benchmark: what the hash chain costs a charge, and how fast the ledger verifies.

Run: `.venv/bin/python -m bench.bench_ledger [--charges N]`. In-process, on a fresh SQLite
database (and PostgreSQL when reachable): N pure-ε charges through `ledger.quick_charge`, each
in its own BEGIN IMMEDIATE transaction as `run_query` does, N replays through
`ledger.record_replay`, then `verify_database` and `export_lines` over the result. Reported:
process CPU time per operation (load-independent on a shared machine) and wall time.
Run the same script from a checkout without the chain to compare the charge's cost.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bench.common import database, make_app, pg_available, print_table
from mechanisms.accounting import PrivacyEvent
from privacy_api.services import ledger
from privacy_api.services.release import QueryCost
from privacy_api.services.users import create_user


class _Plan:
    aggregate = "count"

    def canonical(self) -> dict[str, Any]:
        return {"aggregate": "count", "where": []}


def _timed(n: int, one: Callable[[int], None]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        one(i)
    return (time.process_time() - cpu) / n * 1e3, (time.perf_counter() - wall) / n * 1e3


def run(kind: str, n: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    with database(kind) as url:
        app = make_app(url)
        st = app.extensions["privacy_api"]
        from privacy_api.services.budgets import set_budget
        from privacy_api.services.datasets import create_dataset

        with st.db.transaction() as s:
            owner, _ = create_user(s, "o", "owner")
            analyst, _ = create_user(s, "a", "analyst")
            ds = create_dataset(s, st.keyring, owner, name="d", columns=[
                {"name": "x", "type": "int", "lower": 0, "upper": 1}], privacy_unit=None,
                epsilon_cap=None, delta_cap=None)
            set_budget(s, None, analyst.id, ds.id, epsilon=10 * n, delta=0)
            uid, dsid = analyst.id, ds.id
        cost = QueryCost(Decimal("0.01"), Decimal(0), (PrivacyEvent(Decimal("0.01"), Decimal(0)),))
        ids: list[str] = []

        def charge(i: int) -> None:
            with st.db.core_transaction(immediate=True) as conn:
                c = ledger.quick_charge(conn, uid, dsid, 0, _Plan(), f"{i:064x}", "laplace", cost)
                assert c is not None
                ids.append(c.entry_id)

        cpu, wall = _timed(n, charge)
        rows.append([kind, "charge (quick path)", n, cpu, wall])
        with st.db.core_transaction() as conn:
            ledger.store_answer(conn, ids[0], b"token")
            original = ledger.find_replay(conn, uid, dsid, 0, f"{0:064x}")

        def replay(_: int) -> None:
            with st.db.core_transaction(immediate=True) as conn:
                ledger.record_replay(conn, uid, dsid, original)

        cpu, wall = _timed(n, replay)
        rows.append([kind, "replay entry", n, cpu, wall])
        try:
            from privacy_api.services.ledger_audit import export_lines, verify_database
        except ImportError:  # a checkout without the chain
            return rows
        cpu, wall = _timed(1, lambda _: None if verify_database(st.db).ok else exit(1))
        rows.append([kind, "verify-ledger, per entry", 2 * n, cpu / (2 * n), wall / (2 * n)])
        cpu, wall = _timed(1, lambda _: sum(1 for _ in export_lines(st.db)) and None)
        rows.append([kind, "export, per line", 2 * n, cpu / (2 * n), wall / (2 * n)])
        st.cache.close()
        st.db.dispose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=2000)
    args = parser.parse_args()
    chained = "now" in inspect.signature(ledger.quick_charge).parameters
    rows = run("sqlite", args.charges)
    if pg_available():
        rows += run("postgresql", args.charges)
    print_table(f"ledger ({'hash-chained' if chained else 'no chain'}): ms per operation",
                ["db", "operation", "n", "CPU ms", "wall ms"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
