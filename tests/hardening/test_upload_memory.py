"""An upload's peak memory is a few chunks, not the body (issue 12, finding 3).

Measured in the served process itself: the gunicorn worker's VmHWM (peak resident set) from
/proc before and after one upload. Before streaming, a 26.7 MB JSON body peaked at 890 MB
(about 33x the body), so this 15 MB JSON body would have added some 500 MB; the bound below is a small
fraction of that and well above what the streamed parse needs. The 50 MB figures are in
bench/bench_edge.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from privacy_api.services.users import create_user
from privacy_api.storage.db import Database
from tests.helpers import PATIENTS_SCHEMA
from tests.server import gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

ROWS = 200_000  # ~15 MB as JSON, ~7 MB as CSV
GROWTH_BOUND = 48 * 2**20


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _body(fmt: str, n: int, start: int = 0) -> tuple[bytes, str]:
    rows = [{"patient_id": f"p{i:07d}", "age": i % 90, "sex": "FM"[i % 2],
             "cost": round(100.0 + (i * 37) % 5000 + 0.25, 2), "smoker": i % 3 == 0}
            for i in range(start, start + n)]
    if fmt == "json":
        return orjson.dumps(rows), "application/json"
    lines = ["patient_id,age,sex,cost,smoker"] + [
        f"{r['patient_id']},{r['age']},{r['sex']},{r['cost']},{str(r['smoker']).lower()}"
        for r in rows]
    return ("\n".join(lines) + "\n").encode(), "text/csv"


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_big_upload_peaks_at_a_few_chunks_in_the_worker(db_url: str, fmt: str) -> None:
    database = Database(db_url)
    with database.transaction() as session:
        _, owner = create_user(session, "owner", "owner")
    database.dispose()
    body, ctype = _body(fmt, ROWS)
    warm_up, _ = _body(fmt, 20_000, start=10**7)  # two full chunks: pools and caches started
    with gunicorn(db_url, workers=1, threads=4, served_config=True) as server, \
            httpx.Client(base_url=server.url, timeout=300,
                         headers={"Authorization": f"Bearer {owner}"}) as http:
        (worker,) = server.worker_pids()
        ds = http.post("/v1/datasets", json=PATIENTS_SCHEMA).json()["id"]
        warm = http.post(f"/v1/datasets/{ds}/records", content=warm_up,
                         headers={"Content-Type": ctype})
        assert warm.status_code == 201, warm.text[:300]
        before = _peak_rss(worker)
        resp = http.post(f"/v1/datasets/{ds}/records", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == 201, resp.text[:300]
        after = _peak_rss(worker)
        inserted = resp.json()["inserted"]
        assert http.get(f"/v1/datasets/{ds}").json()["rows"] >= inserted
    assert inserted == ROWS
    print(f"{fmt}: {len(body) / 1e6:.1f} MB body, peak RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
    assert after - before < GROWTH_BOUND, (
        f"peak RSS grew {(after - before) / 2**20:.0f} MiB for a {len(body) / 1e6:.0f} MB body")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


SMALL_ROWS = 20_000  # ~1.5 MB of JSON
BIG_ROWS = 320_000  # ~24 MB: 16x the small body
# What the big body may add to the peak beyond what the small one did: the parse holds a few
# chunks whatever the size (issue 14: ~4 chunks); 16x the body must not be 16x the memory.
EXTRA_PEAK_BOUND = 24 * 2**20
# What a second big upload may leave resident beyond the first: freed chunks are returned or
# reused, never accumulated (issue 14: a worker stayed at 3.1 GB after one upload).
RATCHET_BOUND = 8 * 2**20


def test_peak_does_not_grow_with_the_body_and_memory_is_not_kept(db_url: str) -> None:
    database = Database(db_url)
    with database.transaction() as session:
        _, owner = create_user(session, "owner", "owner")
    database.dispose()
    small, ctype = _body("json", SMALL_ROWS)
    env = {"PRIVACY_API_MAX_CONTENT_LENGTH": str(64 * 2**20)}
    with gunicorn(db_url, workers=1, threads=4, served_config=True, env=env) as server, \
            httpx.Client(base_url=server.url, timeout=600,
                         headers={"Authorization": f"Bearer {owner}", "Content-Type": ctype}) as http:
        (worker,) = server.worker_pids()
        ds = http.post("/v1/datasets", json=PATIENTS_SCHEMA).json()["id"]

        def upload(body: bytes) -> None:
            resp = http.post(f"/v1/datasets/{ds}/records", content=body)
            assert resp.status_code == 201, resp.text[:300]

        upload(_body("json", SMALL_ROWS, start=10**7)[0])  # pools and caches started
        base = _peak_rss(worker)
        upload(small)
        small_peak = _peak_rss(worker)
        big, _ = _body("json", BIG_ROWS, start=SMALL_ROWS)
        upload(big)
        big_peak = _peak_rss(worker)
        after_first = _rss(worker)
        upload(_body("json", BIG_ROWS, start=SMALL_ROWS + BIG_ROWS)[0])
        after_second = _rss(worker)
        rows = http.get(f"/v1/datasets/{ds}").json()["rows"]
    assert rows == 2 * SMALL_ROWS + 2 * BIG_ROWS
    mib = 2**20
    print(f"peak RSS {base / mib:.0f} -> {small_peak / mib:.0f} ({len(small) / 1e6:.1f} MB body) -> "
          f"{big_peak / mib:.0f} MiB ({len(big) / 1e6:.1f} MB body); resident after one big body "
          f"{after_first / mib:.0f}, after two {after_second / mib:.0f} MiB")
    assert big_peak - small_peak < EXTRA_PEAK_BOUND, (
        f"a {len(big) / 1e6:.0f} MB body peaked {(big_peak - small_peak) / mib:.0f} MiB above a "
        f"{len(small) / 1e6:.1f} MB one")
    assert after_second - after_first < RATCHET_BOUND, (
        f"a second big upload left {(after_second - after_first) / mib:.0f} MiB more resident")
