"""Issue 6 load run: 2 instances x 2 workers on PostgreSQL, 50 analysts x 1,000 requests mixing
queries, estimates and replays, 16 at a time, over loopback. Prints throughput and latency
percentiles, then audits every budget against its ledger.

`make load` runs it with the issue's sizes; `--faults` also SIGKILLs workers and restarts
PostgreSQL (root only) while the load runs.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from bench.common import database, make_app, pg_available, print_table
from bench.load import audit, run_load, seed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="10 analysts x 100 requests")
    p.add_argument("--analysts", type=int, default=50)
    p.add_argument("--requests", type=int, default=1000, help="per analyst")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--faults", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.analysts, args.requests = 10, 100
    if not pg_available():
        print("load run skipped: PostgreSQL is not reachable (set PRIVACY_API_BENCH_POSTGRES_URL)")
        return
    from tests.conftest import MASTER_KEY
    from tests.server import gunicorn

    with database("postgresql") as url:
        app = make_app(url, master_keys=[MASTER_KEY])
        # each analyst can pay for 400 of its ~500 new queries: the rest must be refused
        ds, analysts = seed(app, args.analysts, args.rows, epsilon_total=100.0)
        with ExitStack() as stack:
            servers = [stack.enter_context(gunicorn(url, workers=args.workers, threads=4))
                       for _ in range(args.instances)]
            urls = [s.url for s in servers]
            run_load(urls, ds, analysts[:1], per_analyst=8, concurrency=4)  # warm the caches
            report = run_load(urls, ds, analysts, per_analyst=args.requests,
                              concurrency=args.concurrency, servers=servers,
                              kill_every=5.0 if args.faults else None,
                              restart_pg_at=20.0 if args.faults else None)
        result = audit(app, report)
        app.extensions["privacy_api"].db.dispose()
    title = (f"Load: {args.instances} instances x {args.workers} workers on PostgreSQL, "
             f"{args.analysts} analysts x {args.requests} requests, {args.concurrency} at a time"
             + (" (with faults)" if args.faults else ""))
    rows = []
    for kind in ("query", "estimate", "replay"):
        p50, p95, p99 = report.percentiles(kind)
        rows.append([kind, len(report.latencies[kind]), p50, p95, p99])
    print_table(title, ["request", "answered", "p50 ms", "p95 ms", "p99 ms"], rows)
    print_table("Throughput and outcomes", ["metric", "value"], [
        ["requests", report.requests], ["seconds", report.seconds],
        ["requests/s", report.requests / report.seconds],
        ["transport errors", report.transport_errors],
        ["workers SIGKILLed", report.kills], ["PostgreSQL restarts", report.pg_restarts],
        *[[k, v] for k, v in sorted(report.statuses.items())],
    ])
    print_table("Ledger audit after the run", ["check", "result"], [[k, v] for k, v in result.items()])
    if not (result["spent_equals_ledger"] and result["none_over_cap"]
            and result["answers_without_charge"] == 0):
        raise SystemExit("LEDGER AUDIT FAILED")


if __name__ == "__main__":
    main()
