"""`make bench`: run every benchmark in one go, each printing its tables.

Each runs in its own process so one benchmark's worker pools and caches do not skew the next.
Pass --quick for a smaller smoke run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["bench_storage", "bench_queries", "bench_sql", "bench_timing", "bench_he", "bench_load",
           "bench_edge", "bench_scale"]


def main() -> int:
    args = sys.argv[1:]
    here = Path(__file__).parent
    failed = []
    for name in BENCHES:
        if not (here / f"{name}.py").exists():
            continue
        print(f"\n# {name}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", f"bench.{name}", *args], cwd=here.parent)
        print(f"({name}: {time.perf_counter() - t:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
