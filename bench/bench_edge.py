"""The production edge against hostile clients (issue 12): what the served configuration does.

1. Probe latency (20 sequential authenticated GET /v1/me, 5 s timeout each) while N
   connections trickle headers a byte at a time (half) or bodies after a refusal (half),
   for gunicorn's gthread worker and for the waitress worker (privacy_api/app/serving.py).
2. Peak RSS of the one gunicorn worker (VmHWM from /proc) across one 50 MB upload, per format.
3. 620 anonymous requests from one address, then a signed-in admin's dashboard pages and API
   calls from the same address.

`--root DIR` serves another checkout's code (e.g. main before this change) with the same
driver, which is how the "before" figures are taken; `--quick` uses 10 MB uploads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
from cryptography.fernet import Fernet

from bench.common import print_table
from tests.server import free_port, wait_ready
from tests.slow_clients import SlowClients, probe, slow_header_request, trickled_body_request

HERE = Path(__file__).resolve().parent.parent


@contextmanager
def served(root: Path, db_url: str, key: str, *, workers: int, env: dict[str, str]
           ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    full_env = {**os.environ, "PRIVACY_API_DATABASE_URL": db_url, "PRIVACY_API_MASTER_KEYS": key,
                "PRIVACY_API_ENV": "development", "PRIVACY_API_LOG_LEVEL": "WARNING", **env}
    full_env.pop("PRIVACY_API_MASTER_KEY_FILE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:privacy_api.app.gunicorn_conf",
         "--workers", str(workers), "--threads", "4", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "--access-logfile", "/dev/null", "privacy_api.app.wsgi:app"],
        cwd=root, env=full_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _world(tmp: Path) -> tuple[str, str, dict[str, str]]:
    from privacy_api.services.users import create_user
    from privacy_api.storage.db import Database
    from privacy_api.storage.migrate import upgrade

    url = f"sqlite:///{tmp}/edge.sqlite3"
    upgrade(url)
    database = Database(url)
    keys = {}
    with database.transaction() as session:
        for role in ("admin", "owner", "analyst"):
            _, keys[role] = create_user(session, role, role)
    database.dispose()
    return url, Fernet.generate_key().decode(), keys


def bench_slow_clients(root: Path, tmp: Path, worker_class: str, conns: int) -> list[object]:
    url, master, keys = _world(tmp)
    env = {"PRIVACY_API_WORKER_CLASS": worker_class}
    with served(root, url, master, workers=2, env=env) as (base, _):
        attack = SlowClients(int(base.rsplit(":", 1)[1]), interval=0.3)
        for i in range(conns):
            if i % 2 == 0:
                attack.add(slow_header_request())
            else:
                head, body = trickled_body_request("/v1/datasets/1/records", "pa_" + "0" * 16 + "_x")
                attack.add(body, head)
        attack.start()
        time.sleep(1.0)
        answers = probe(base, keys["admin"], count=20, timeout=5.0)
        attack.stop()
    ok = [a for a in answers if a is not None]
    p50 = statistics.median(ok) * 1000 if ok else float("nan")
    worst = max(ok) * 1000 if ok else float("nan")
    return [worker_class.rsplit(".", 1)[-1], conns, f"{len(ok)}/20", p50, worst]


def _rows(target_bytes: int) -> list[dict[str, object]]:
    one = {"patient_id": "p0000000", "age": 42, "sex": "F", "cost": 1234.25, "smoker": True}
    n = target_bytes // (len(orjson.dumps(one)) + 1)
    return [{"patient_id": f"p{i:07d}", "age": i % 90, "sex": "FM"[i % 2],
             "cost": round(100.0 + (i * 37) % 5000 + 0.25, 2), "smoker": i % 3 == 0}
            for i in range(n)]


def _encode(rows: list[dict[str, object]], fmt: str) -> tuple[bytes, str]:
    if fmt == "json":
        return orjson.dumps(rows), "application/json"
    if fmt == "ndjson":
        return b"\n".join(orjson.dumps(r) for r in rows) + b"\n", "application/x-ndjson"
    lines = ["patient_id,age,sex,cost,smoker"] + [
        f"{r['patient_id']},{r['age']},{r['sex']},{r['cost']},{str(r['smoker']).lower()}" for r in rows]
    return ("\n".join(lines) + "\n").encode(), "text/csv"


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def bench_upload_rss(root: Path, tmp: Path, size: int, fmt: str) -> list[object]:
    from tests.helpers import PATIENTS_SCHEMA

    url, master, keys = _world(tmp)
    body, ctype = _encode(_rows(size), fmt)
    env = {"PRIVACY_API_MAX_CONTENT_LENGTH": str(128 * 2**20)}
    with served(root, url, master, workers=1, env=env) as (base, proc):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        worker = int(children[0])
        auth = {"Authorization": f"Bearer {keys['owner']}"}
        with httpx.Client(base_url=base, headers=auth, timeout=600) as http:
            ds = http.post("/v1/datasets", json=PATIENTS_SCHEMA).json()["id"]
            http.post(f"/v1/datasets/{ds}/records", json=_rows(2000)).raise_for_status()
            before = _vm(worker, "VmHWM")
            t = time.perf_counter()
            resp = http.post(f"/v1/datasets/{ds}/records", content=body,
                             headers={"Content-Type": ctype})
            seconds = time.perf_counter() - t
            assert resp.status_code == 201, resp.text[:300]
            peak = _vm(worker, "VmHWM")
    return [fmt, f"{len(body) / 1e6:.1f} MB", resp.json()["inserted"], before / 2**20,
            peak / 2**20, seconds]


def bench_dashboard_vs_anonymous(root: Path, tmp: Path) -> list[list[object]]:
    url, master, keys = _world(tmp)
    env = {"PRIVACY_API_RATE_LIMIT": "600/minute"}
    rows: list[list[object]] = []
    with served(root, url, master, workers=1, env=env) as (base, _), \
            httpx.Client(base_url=base, timeout=10) as browser, \
            httpx.Client(base_url=base, timeout=10) as anon:
        page = browser.get("/admin/signin").text
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        signed = browser.post("/admin/signin", data={"api_key": keys["admin"], "csrf_token": token})
        anon_status = Counter(anon.get("/v1/me").status_code for _ in range(620))
        rows.append(["620 anonymous GET /v1/me", _counts(anon_status)])
        rows.append(["dashboard sign-in", str(signed.status_code)])
        dash = Counter(browser.get("/admin/").status_code for _ in range(20))
        rows.append(["20 dashboard pages, signed-in admin", _counts(dash)])
        api = Counter(anon.get("/v1/me", headers={"Authorization": f"Bearer {keys['admin']}"})
                      .status_code for _ in range(20))
        rows.append(["20 API calls with the admin key", _counts(api)])
        forged = Counter(anon.get("/v1/me", headers={"Authorization": f"Bearer pa_{i:016x}_{'x' * 43}"})
                         .status_code for i in range(20))
        rows.append(["20 forged pa_ tokens", _counts(forged)])
    return rows


def _counts(c: Counter[int]) -> str:
    return ", ".join(f"{n}x{status}" for status, n in sorted(c.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=HERE)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["slow", "rss", "limits"], default=None)
    parser.add_argument("--formats", default="json,ndjson,csv", help="upload formats to measure")
    args = parser.parse_args()
    root = args.root.resolve()
    label = "this tree" if root == HERE else str(root)
    print(f"serving code from: {label}")
    size = 10 * 10**6 if args.quick else 50 * 10**6
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        def fresh() -> Path:
            shutil.rmtree(tmp / "w", ignore_errors=True)
            (tmp / "w").mkdir()
            return tmp / "w"

        if args.only in (None, "slow"):
            rows = [bench_slow_clients(root, fresh(), wc, n)
                    for wc in ("gthread", "privacy_api.app.serving.WaitressWorker")
                    for n in (0, 16, 64)
                    if root == HERE or wc == "gthread"]
            print_table("Probe latency under slow connections (2 workers x 4 threads; 20 probes, "
                        "5 s timeout)", ["worker", "slow conns", "answered", "p50 ms", "max ms"],
                        rows)
        if args.only in (None, "rss"):
            rows = [bench_upload_rss(root, fresh(), size, fmt) for fmt in args.formats.split(",")]
            print_table("Worker peak RSS across one upload (SQLite, 1 worker; VmHWM)",
                        ["format", "body", "rows", "peak before MiB", "peak after MiB", "s"], rows)
        if args.only in (None, "limits"):
            print_table("Dashboard vs anonymous from one address (600/minute)",
                        ["traffic", "statuses"], bench_dashboard_vs_anonymous(root, fresh()))


if __name__ == "__main__":
    main()
