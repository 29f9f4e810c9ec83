"""Issue 14 (cache side): cold load, peak memory, two workers' memory and a 1% append.

Each measurement runs in a fresh worker process (`python -c`, from a checkout given by
--code, default this one), so `--code /path/to/older/checkout` measures the old cache on the
same database. Figures: wall time of the load, the worker's peak resident memory (VmHWM)
growth, and the proportional set size (PSS) of two workers that loaded the same version —
host memory, shared pages counted once.

Run: `.venv/bin/python -m bench.bench_shared_cache --rows 1000000 [--code DIR]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.fernet import Fernet

from bench.common import print_table

SCHEMA = {"name": "bench", "columns": [
    {"name": "age", "type": "int", "lower": 0, "upper": 100},
    {"name": "cost", "type": "float", "lower": 0, "upper": 100000},
    {"name": "stay", "type": "int", "lower": 0, "upper": 60}], "privacy_unit": None}

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("PRIVACY_API_LOG_LEVEL", "WARNING")
from sqlalchemy import select
from privacy_api import create_app
from privacy_api.storage.models import Dataset

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
def pss():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024

cfg = json.loads(sys.argv[1])
app = create_app(cfg["config"])
st = app.extensions["privacy_api"]
hold = []
for line in sys.stdin:
    cmd, arg = json.loads(line)
    if cmd == "load":
        base_hwm, base_pss = status("VmHWM"), pss()
        t = time.perf_counter()
        with st.db.sessions() as s:
            data = st.columns_for(s, s.scalar(select(Dataset).where(Dataset.id == arg)))
        secs = time.perf_counter() - t
        touched = sum(float(c.sum()) for c in data.columns.values())  # every page
        hold.append(data)
        out = {"secs": secs, "n_rows": data.n_rows,
               "column_bytes": sum(c.nbytes for c in data.columns.values()),
               "hwm_growth": status("VmHWM") - base_hwm, "pss_growth": pss() - base_pss,
               "hwm": status("VmHWM"), "rss": status("VmRSS"), "base_pss": base_pss}
        print(json.dumps(out), flush=True)
    elif cmd == "pss":
        print(json.dumps({"pss": pss()}), flush=True)
"""


class Child:
    def __init__(self, code: Path, url: str, key: bytes, env: dict[str, str]) -> None:
        cfg = {"config": {"database_url": url, "master_keys": [key.decode()],
                          "decrypt_workers": 2}}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)], cwd=code, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **env})

    def call(self, cmd: str, arg: Any = None) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps([cmd, arg]) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(30)


def _csv(n: int, start: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 100, n)
    cost = np.round(rng.lognormal(7.5, 0.6, n), 2)
    stay = rng.integers(0, 60, n)
    buf = io.StringIO()
    buf.write("age,cost,stay\n")
    for a, c, s in zip(age.tolist(), cost.tolist(), stay.tolist(), strict=True):
        buf.write(f"{a},{min(c, 99999.0)},{s}\n")
    return buf.getvalue().encode()


def build(directory: Path, rows: int) -> tuple[str, bytes, int, Any]:
    from privacy_api import create_app
    from privacy_api.services.users import create_user
    from privacy_api.storage.migrate import upgrade

    url = f"sqlite:///{directory}/bench.sqlite3"
    upgrade(url)
    key = Fernet.generate_key()
    app = create_app({"database_url": url, "master_keys": [key], "decrypt_workers": 2,
                      "max_content_length": 1 << 30})
    st = app.extensions["privacy_api"]
    with st.db.transaction() as s:
        _, owner = create_user(s, "owner", "owner")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {owner}"}
    ds = client.post("/v1/datasets", json=SCHEMA, headers=auth).get_json()["id"]
    for i in range(0, rows, 250_000):
        resp = client.post(f"/v1/datasets/{ds}/records", data=_csv(min(250_000, rows - i), i, i),
                           headers={**auth, "Content-Type": "text/csv"})
        assert resp.status_code == 201, resp.get_json()
    return url, key, ds, (client, auth)


def scenario(code: Path, url: str, key: bytes, ds: int, rows: int, http: Any) -> None:
    client, auth = http
    shm = tempfile.mkdtemp(prefix="privacy-api-bench-", dir="/dev/shm")
    env = {"PRIVACY_API_SHARED_CACHE_DIR": shm, "PRIVACY_API_LOG_LEVEL": "WARNING"}
    try:
        a, b = Child(code, url, key, env), Child(code, url, key, env)
        first = a.call("load", ds)
        second = b.call("load", ds)
        pss_a, pss_b = a.call("pss")["pss"], b.call("pss")["pss"]
        # 1% append, then the first load of the new version in each worker
        n_new = max(1, rows // 100)
        resp = client.post(f"/v1/datasets/{ds}/records", data=_csv(n_new, rows, 99),
                           headers={**auth, "Content-Type": "text/csv"})
        assert resp.status_code == 201
        append_a = a.call("load", ds)
        append_b = b.call("load", ds)
        a.close()
        b.close()
    finally:
        shutil.rmtree(shm, True)
    mb = 1024 * 1024
    col = first["column_bytes"]
    print_table(f"Column cache, {first['n_rows']} rows x 3 columns (code: {code})",
                ["measure", "worker A", "worker B"], [
                    ["first load (s)", first["secs"], second["secs"]],
                    ["column bytes (MB)", col / mb, second["column_bytes"] / mb],
                    ["peak RSS growth during load (MB)", first["hwm_growth"] / mb,
                     second["hwm_growth"] / mb],
                    ["peak / column bytes", first["hwm_growth"] / col,
                     second["hwm_growth"] / col],
                    ["after 1% append: first load (s)", append_a["secs"], append_b["secs"]],
                    ["append load / cold load (worker A)", append_a["secs"] / first["secs"], ""],
                ])
    both = (pss_a - first["base_pss"]) + (pss_b - second["base_pss"])
    print(f"\nhost memory of the two workers' copies (PSS of A and B once both loaded, minus "
          f"their PSS before): {both / mb:.1f} MB = {both / col:.2f} x one copy", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--code", nargs="+",
                        default=[str(Path(__file__).resolve().parent.parent)])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        url, key, ds, http = build(Path(tmp), args.rows)
        print(f"built {args.rows} rows in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        template = Path(tmp) / "bench.sqlite3"
        for i, code in enumerate(args.code):
            copy = Path(tmp) / f"run{i}.sqlite3"
            shutil.copy(template, copy)
            from privacy_api import create_app

            app = create_app({"database_url": f"sqlite:///{copy}", "master_keys": [key],
                              "decrypt_workers": 2, "max_content_length": 1 << 30})
            scenario(Path(code), f"sqlite:///{copy}", key, ds, args.rows,
                     (app.test_client(), http[1]))
            copy.unlink()


if __name__ == "__main__":
    main()
