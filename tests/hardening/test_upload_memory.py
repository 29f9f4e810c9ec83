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

from privacy_api.db import Database
from privacy_api.services.users import create_user
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
