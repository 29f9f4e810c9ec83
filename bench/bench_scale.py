"""Issue 14 cost model: the shipped server (gunicorn + the waitress worker, SQLite) at 1M-10M rows.

Per dataset size, over real HTTP:

- upload rows/s (CSV bodies of `--body-rows` rows, one after another) and the serving
  worker's peak RSS growth (VmHWM) beside the bytes of one parse chunk;
- per worker count (1, 2, 4; a fresh server each, so every load is cold): the first query's
  time (cold load, s per million rows), the host's peak memory during it (the sum of PSS of
  every process of the server, polled) against the version's column bytes, and the resident
  bytes per row per host once every worker has answered (sum of PSS from smaps_rollup,
  tmpfs pages counted once, by the shared-cache files' size);
- with 2 workers: warm p50/p95 of count / filtered mean / grouped mean / median, and the
  first answer after a 1% append against the cold load.

Targets from issue 14 are printed beside each figure with PASS/FAIL. The machine is shared
(2 cores, other engineers' tests running): latencies include waiting for a core.

Runtime: ~8 min for 1M rows with 1, 2 and 4 workers on 2 shared cores under load (measured);
4M and 10M scale with the upload (~23k rows/s there) and the three cold loads (~50 s per
million rows there), so the default 1M,4M,10M plus the 1M demo run takes on the order of 1.5-2
hours on such a machine (estimated, not run). `--sizes 1M,4M` shortens it; `--root DIR`
serves another checkout's code with the same driver (the "before" figures).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.bench_edge import _vm, _world, served
from bench.bench_queries import _distinct, _pcts, time_http
from bench.common import print_table
from privacy_api.app.demo import DEMO_COLUMNS, synthetic_patients
from privacy_api.storage.columns import RANGE_ROWS

HERE = Path(__file__).resolve().parent.parent
CATS = ["a", "b", "c", "d"]
SIMPLE_COLUMNS: list[dict[str, Any]] = [
    {"name": "x", "type": "float", "lower": 0, "upper": 1000},
    {"name": "y", "type": "float", "lower": 0, "upper": 100},
    {"name": "c", "type": "category", "categories": CATS},
]
# Issue 14's targets.
TARGET_HOST_COPIES_2W = 1.3
TARGET_APPEND_FRACTION = 0.10
TARGET_UPLOAD_CHUNKS = 4.0
TARGET_COLD_PEAK_COPIES = 2.0
TARGET_FILTERED_MEAN_P50_MS = 60.0
WORKER_COUNTS = (1, 2, 4)
TIMED = 30  # warm requests per query kind
POOL_IDLE_S = float(os.environ.get("PRIVACY_API_DECRYPT_POOL_IDLE_S", 5.0))


@dataclass(frozen=True)
class Shape:
    """A dataset shape: its schema, a body generator and the four timed queries."""

    name: str
    columns: list[dict[str, Any]]
    privacy_unit: dict[str, Any] | None
    body: Callable[[int, int], tuple[bytes, str]]  # (rows, seed) -> (body, content type)
    queries: dict[str, dict[str, Any]]


def _simple_body(n: int, seed: int) -> tuple[bytes, str]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1000, n).round(2)
    y = np.clip(rng.normal(50, 15, n), 0, 100).round(3)
    c = rng.integers(0, len(CATS), n)
    lines = [f"{a},{b},{CATS[k]}" for a, b, k in zip(x.tolist(), y.tolist(), c.tolist(), strict=True)]
    return ("x,y,c\n" + "\n".join(lines) + "\n").encode(), "text/csv"


def _demo_body(n: int, seed: int) -> tuple[bytes, str]:
    return b"\n".join(orjson.dumps(r) for r in synthetic_patients(n, seed)) + b"\n", "application/x-ndjson"


SHAPES = {
    "simple": Shape("3 columns (float, float, category)", SIMPLE_COLUMNS, None, _simple_body, {
        "count": {"aggregate": "count"},
        "filtered mean": {"aggregate": "mean", "column": "y",
                          "where": [{"column": "x", "op": ">=", "value": 500}]},
        "grouped mean": {"aggregate": "mean", "column": "y", "group_by": ["c"]},
        "median": {"aggregate": "quantile", "column": "y", "quantile": 0.5},
    }),
    "demo": Shape("demo schema (8 columns, unit patient_id)", DEMO_COLUMNS,
                  {"column": "patient_id", "max_rows": 3}, _demo_body, {
        "count": {"aggregate": "count"},
        "filtered mean": {"aggregate": "mean", "column": "cost",
                          "where": [{"column": "age", "op": ">=", "value": 65}]},
        "grouped mean": {"aggregate": "mean", "column": "cost", "group_by": ["region"]},
        "median": {"aggregate": "quantile", "column": "cost", "quantile": 0.5},
    }),
}


def column_bytes_per_row(columns: list[dict[str, Any]]) -> int:
    """Bytes one row takes in the decrypted columns (the cache's dtypes)."""
    from privacy_api.storage.columns import _dtype
    from privacy_api.storage.dataset_schema import parse_schema

    schema = parse_schema(columns, None)
    return sum(np.dtype(_dtype(c)).itemsize for c in schema.columns)


def chunk_bytes(shape: Shape) -> int:
    """Python-heap peak of parsing, encoding and encrypting one upload chunk in-process (what
    each of the few chunks an upload holds costs), by tracemalloc."""
    import io
    import tracemalloc

    from cryptography.fernet import Fernet

    from privacy_api.crypto import fernet_batch
    from privacy_api.services.uploads import CHUNK_ROWS, RowErrors, iter_encoded
    from privacy_api.storage.dataset_schema import RowEncoder, parse_schema

    body, ctype = shape.body(CHUNK_ROWS, 1)
    encoder = RowEncoder(parse_schema(shape.columns, shape.privacy_unit))
    key = Fernet.generate_key()
    tracemalloc.start()
    for chunk in iter_encoded(encoder, ctype, io.BytesIO(body), RowErrors()):
        tokens = fernet_batch.encrypt(key, chunk)
        del tokens
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return int(peak)


# -- /proc ---------------------------------------------------------------------------------------
def server_pids(pgid: int) -> list[int]:
    """Every process of the server (its own session: master, workers, pool processes)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def pss(pid: int) -> int:
    """The process's proportional share of resident memory, tmpfs (shared cache) pages left out:
    those are counted once, by the size of their files (`host_bytes`)."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return 0
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def tmpfs_bytes(directory: Path | None) -> int:
    if directory is None or not directory.exists():
        return 0
    return sum(f.stat().st_blocks * 512 for f in directory.rglob("*") if f.is_file())


def host_bytes(pgid: int, shared: Path | None = None) -> int:
    """Memory the server holds on the host: every process's PSS plus its shared-cache files."""
    return sum(pss(p) for p in server_pids(pgid)) + tmpfs_bytes(shared)


def settled_host_bytes(pgid: int, shared: Path | None, timeout: float = 120.0) -> int:
    """The idle baseline once every worker has finished importing: the server answers as soon as
    one worker is up, and another still importing the app (~140 MiB) would later count as the
    dataset's. Settled = two samples 1 s apart within 1 MiB."""
    deadline = time.monotonic() + timeout
    last = host_bytes(pgid, shared)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = host_bytes(pgid, shared)
        if abs(now - last) < 2**20:
            return now
        last = now
    return last


def worker_pids(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


class PeakPoller:
    """The highest host memory seen while the block runs (polled every 50 ms)."""

    def __init__(self, pgid: int, shared: Path | None) -> None:
        self.pgid = pgid
        self.shared = shared
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, host_bytes(self.pgid, self.shared))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, host_bytes(self.pgid, self.shared))


# -- the run -------------------------------------------------------------------------------------
@dataclass
class World:
    db_url: str
    master: str
    keys: dict[str, str]
    dataset: int = 0


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _bodies(shape: Shape, n: int, per_body: int, seed: int) -> Iterator[tuple[bytes, str, int]]:
    done = 0
    while done < n:
        rows = min(per_body, n - done)
        body, ctype = shape.body(rows, seed + done)
        yield body, ctype, rows
        done += rows


def upload(http: httpx.Client, world: World, shape: Shape, n: int, per_body: int, seed: int,
           workers: list[int]) -> dict[str, float]:
    """Upload n rows in bodies of per_body rows; rows/s over the HTTP time only (the bodies are
    generated before each is sent) and the largest VmHWM growth of any worker."""
    before = {p: _vm(p, "VmHWM") for p in workers}
    seconds = 0.0
    largest_body = 0
    for body, ctype, _ in _bodies(shape, n, per_body, seed):
        largest_body = max(largest_body, len(body))
        t = time.perf_counter()
        resp = http.post(f"/v1/datasets/{world.dataset}/records", content=body,
                         headers={"Content-Type": ctype, **_auth(world.keys["owner"])})
        seconds += time.perf_counter() - t
        assert resp.status_code == 201, resp.text[:300]
    growth = max((_vm(p, "VmHWM") - before[p] for p in workers), default=0)
    return {"rows_per_s": n / seconds, "seconds": seconds, "hwm_growth": growth,
            "body_bytes": largest_body}


_fresh = itertools.count()


def first_answer(http: httpx.Client, world: World, spec: dict[str, Any]) -> float:
    """One charged query (a new epsilon each time: a replay would not touch the data)."""
    epsilon = round(0.5 + next(_fresh) * 1e-6, 6)
    t = time.perf_counter()
    resp = http.post(f"/v1/datasets/{world.dataset}/query", json={**spec, "epsilon": epsilon},
                     headers=_auth(world.keys["analyst"]))
    assert resp.status_code == 200, resp.text[:300]
    return time.perf_counter() - t


def warm_every_worker(base: str, world: World, base_rss: dict[int, int], copy_bytes: int,
                      spec: dict[str, Any]) -> int:
    """Concurrent queries until every worker's RSS shows the dataset (or 20 bursts): which worker
    answers is the kernel's choice, so bursts of as many requests as threads. Returns how many
    workers hold it."""
    workers = list(base_rss)

    def holding() -> int:
        return sum(_vm(p, "VmRSS") - base_rss[p] >= copy_bytes // 4 for p in workers)

    def ask(_: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            first_answer(http, world, spec)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            if holding() == len(workers):
                break
            list(pool.map(ask, range(8)))
    return holding()


def run_shape(shape: Shape, n: int, args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    shared = Path(tempfile.mkdtemp(prefix="bench_scale_", dir="/dev/shm"))
    url, master, keys = _world(tmp)
    world = World(url, master, keys)
    root = Path(args.root).resolve()
    # the warm-up bursts run 8 queries of one key at once (the per-key cap is for analysts)
    env = {"PRIVACY_API_MAX_CONTENT_LENGTH": str(256 * 2**20),
           "PRIVACY_API_MAX_CONCURRENT_EXPENSIVE": "64",
           # this run's own shared-cache directory, so its files can be counted (and removed)
           "PRIVACY_API_SHARED_CACHE_DIR": str(shared)}
    per_row = column_bytes_per_row(shape.columns)
    copy_bytes = n * per_row
    out: dict[str, Any] = {"rows": n, "copy_bytes": copy_bytes, "per_row": per_row,
                           "chunk_bytes": chunk_bytes(shape), "cold": {}}
    # Upload (and budgets) through a 2-worker server.
    with served(root, url, master, workers=2, env=env) as (base, proc), \
            httpx.Client(base_url=base, timeout=1200) as http:
        resp = http.post("/v1/datasets", headers=_auth(keys["owner"]), json={
            "name": "scale", "columns": shape.columns, "privacy_unit": shape.privacy_unit})
        assert resp.status_code == 201, resp.text
        world.dataset = resp.json()["id"]
        # one small upload into another dataset first: the worker's encryption pool starts then,
        # not inside the timed upload
        warm_up = World(url, master, keys, http.post("/v1/datasets", headers=_auth(keys["owner"]), json={
            "name": "warm-up", "columns": shape.columns, "privacy_unit": shape.privacy_unit}).json()["id"])
        for seed in (7, 8):
            upload(http, warm_up, shape, 20_000, 20_000, seed, [])
        analyst = http.get("/v1/me", headers=_auth(keys["analyst"])).json()["id"]
        resp = http.put(f"/v1/budgets/{analyst}/{world.dataset}", json={"epsilon": 1e6},
                        headers=_auth(keys["admin"]))
        assert resp.status_code == 200, resp.text
        out["upload"] = upload(http, world, shape, n, args.body_rows, 0, worker_pids(proc.pid))
        print(f"  uploaded {n:,} rows: {out['upload']['rows_per_s']:,.0f} rows/s", flush=True)
    spec = shape.queries["count"]
    # touches every column the queries read, so a worker's RSS shows the copy once it has it
    warm_spec = {**shape.queries["grouped mean"], "where": shape.queries["filtered mean"]["where"]}
    for workers in args.workers:
        # every server starts cold: a copy left on tmpfs by the previous one would be reused
        shutil.rmtree(shared, ignore_errors=True)
        shared.mkdir()
        with served(root, url, master, workers=workers, env=env) as (base, proc), \
                httpx.Client(base_url=base, timeout=1200) as http:
            idle = settled_host_bytes(proc.pid, shared)
            base_rss = {p: _vm(p, "VmRSS") for p in worker_pids(proc.pid)}
            with PeakPoller(proc.pid, shared) as poller:
                cold = first_answer(http, world, spec)
            held = warm_every_worker(base, world, base_rss, copy_bytes, warm_spec)
            # resident means steady state: after the decryption pool's idle exit
            time.sleep(POOL_IDLE_S + 1.0)
            warm = host_bytes(proc.pid, shared)
            row: dict[str, Any] = {"cold_s": cold, "idle": idle, "peak": poller.peak,
                                   "warm": warm, "held": held}
            print(f"  {workers} worker(s): cold {cold:.1f} s, host +{(warm - idle) / 2**20:.0f} MiB "
                  f"({held}/{workers} workers hold it)", flush=True)
            if workers == 2 and not getattr(args, "memory_only", False):
                row["latency"] = {
                    name: _pcts(time_http(http, f"/v1/datasets/{world.dataset}/query",
                                          keys["analyst"], _distinct(q, TIMED), False)[0])
                    for name, q in shape.queries.items()}
                # every query kind's per-version arrays are built by now (the median's index
                # among them): the host's memory with all of them, beside the warm figure
                row["after_all_kinds"] = host_bytes(proc.pid, shared)
                appended = max(1, n // 100)
                upload(http, world, shape, appended, args.body_rows, 10**9, worker_pids(proc.pid))
                row["after_append_s"] = first_answer(http, world, spec)
            out["cold"][workers] = row
    shutil.rmtree(shared, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(label: str, results: list[dict[str, Any]]) -> None:
    mib = 2**20
    print_table(f"Upload ({label}): CSV/NDJSON bodies over HTTP, 2 workers", [
        "rows", "rows/s", "body MB", "worker peak RSS growth MiB", "one chunk MiB",
        "growth / chunk", f"target <= {TARGET_UPLOAD_CHUNKS:g}"], [
        [r["rows"], r["upload"]["rows_per_s"], r["upload"]["body_bytes"] / 1e6,
         r["upload"]["hwm_growth"] / mib, r["chunk_bytes"] / mib,
         r["upload"]["hwm_growth"] / r["chunk_bytes"],
         _verdict(r["upload"]["hwm_growth"] <= TARGET_UPLOAD_CHUNKS * r["chunk_bytes"])]
        for r in results])
    rows = []
    for r in results:
        for w, c in r["cold"].items():
            copies = (c["warm"] - c["idle"]) / r["copy_bytes"]
            target = (f"{_verdict(copies <= TARGET_HOST_COPIES_2W)} (<= {TARGET_HOST_COPIES_2W:g})"
                      if w == 2 else "")
            range_bytes = min(r["rows"], RANGE_ROWS) * r["per_row"]
            peak_ok = c["peak"] - c["idle"] <= TARGET_COLD_PEAK_COPIES * r["copy_bytes"] + range_bytes
            rows.append([r["rows"], w, f"{c['held']}/{w}", c["cold_s"], c["cold_s"] / (r["rows"] / 1e6),
                         (c["peak"] - c["idle"]) / mib, r["copy_bytes"] / mib,
                         _verdict(peak_ok), (c["warm"] - c["idle"]) / r["rows"], copies, target])
    kinds = [[r["rows"], (c["after_all_kinds"] - c["idle"]) / mib,
              (c["after_all_kinds"] - c["idle"]) / r["rows"],
              (c["after_all_kinds"] - c["idle"]) / r["copy_bytes"]]
             for r in results for w, c in r["cold"].items() if "after_all_kinds" in c]
    if kinds:
        print_table(f"Host memory once every query kind has run, 2 workers ({label}): the "
                    "warm figure plus each kind's per-version arrays (the median's index)", [
                        "rows", "above idle MiB", "B/row", "copies"], kinds)
    print_table(f"Cold load and resident memory per host ({label}; PSS of every server process "
                "+ shared-cache files)", [
        "rows", "workers", "hold it", "cold s", "s per 1M rows", "load peak MiB", "one copy MiB",
        "peak <= 2x copy + range", "resident B/row", "copies", "2 workers: target"], rows)
    lat = []
    for r in results:
        c = r["cold"].get(2)
        if not c or "latency" not in c:
            continue
        for name, (p50, p95) in c["latency"].items():
            target = ""
            if name == "filtered mean":
                ok = p50 <= TARGET_FILTERED_MEAN_P50_MS
                target = f"{_verdict(ok)} (<= {TARGET_FILTERED_MEAN_P50_MS:g})"
            lat.append([r["rows"], name, p50, p95, target])
    if lat:  # none with --memory-only
        print_table(f"Warm latency over HTTP, 2 workers, {TIMED} charged queries each ({label})",
                    ["rows", "query", "p50 ms", "p95 ms", "p50 target"], lat)
    app = []
    for r in results:
        c = r["cold"].get(2)
        if c and "after_append_s" in c:
            frac = c["after_append_s"] / c["cold_s"]
            app.append([r["rows"], c["cold_s"], c["after_append_s"], frac,
                        f"{_verdict(frac <= TARGET_APPEND_FRACTION)} (<= {TARGET_APPEND_FRACTION:g})"])
    if app:
        print_table(f"First answer after a 1% append vs the cold load, 2 workers ({label})",
                    ["rows", "cold s", "after append s", "fraction", "target"], app)


def parse_size(s: str) -> int:
    s = s.strip().upper()
    return int(float(s[:-1]) * 1_000_000) if s.endswith("M") else int(s)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="1M,4M,10M", help="rows of the 3-column dataset")
    p.add_argument("--demo-size", default="1M", help="rows of the demo-schema dataset (0: skip)")
    p.add_argument("--workers", default="1,2,4", help="worker counts to serve with")
    p.add_argument("--body-rows", type=int, default=500_000, help="rows per upload body")
    p.add_argument("--root", default=str(HERE), help="checkout whose code is served")
    p.add_argument("--quick", action="store_true", help="100k rows, 1 and 2 workers (smoke run)")
    p.add_argument("--memory-only", action="store_true",
                   help="upload, cold loads and resident memory only: no warm latency, no append")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    demo = parse_size(args.demo_size)
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.quick:
        sizes, demo, args.workers = [100_000], 100_000, [1, 2]
    print(f"serving {args.root}; 2 shared cores: latencies include waiting for a core", flush=True)
    for key, todo in (("simple", sizes), ("demo", [demo] if demo else [])):
        shape = SHAPES[key]
        results = []
        for n in todo:
            print(f"# {shape.name}: {n:,} rows", flush=True)
            results.append(run_shape(shape, n, args))
            report(f"{shape.name}, {n:,} rows", results[-1:])  # each size as soon as it is done
        if len(results) > 1:
            report(f"{shape.name}, all sizes", results)


if __name__ == "__main__":
    main()
