"""Issue 2 benchmark: upload throughput and cold decryption, beside raw Fernet in the same run.

Run: `make bench` (all benchmarks) or `.venv/bin/python -m bench.bench_storage [--quick]`.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from typing import Any

import orjson
from cryptography.fernet import Fernet

from bench.common import database, make_app, pg_available, print_table
from privacy_api.app.demo import DEMO_COLUMNS, synthetic_patients

RECORD = orjson.dumps(["P0001234", 42, 1, 3, 2, 1234.56, 4, 0])


def raw_fernet(n: int) -> tuple[float, float]:
    """Tokens/s of cryptography's Fernet, one token at a time, one core."""
    f = Fernet(Fernet.generate_key())
    t = time.perf_counter()
    tokens = [f.encrypt(RECORD) for _ in range(n)]
    enc = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for tok in tokens:
        f.decrypt(tok)
    dec = n / (time.perf_counter() - t)
    return enc, dec


def batched_fernet(n: int, batch: int = 8192) -> tuple[float, float]:
    """Tokens/s of the service's batched codec (same tokens), in upload-sized batches, one core."""
    from privacy_api.crypto import fernet_batch

    key = Fernet.generate_key()
    plaintexts = [RECORD] * batch
    t = time.perf_counter()
    tokens = [tok for _ in range(0, n, batch) for tok in fernet_batch.encrypt(key, plaintexts)]
    enc = len(tokens) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(tokens), batch):
        fernet_batch.decrypt([key], tokens[i:i + batch])
    dec = len(tokens) / (time.perf_counter() - t)
    return enc, dec


def _warm(cache: Any) -> None:
    """Start the worker processes, as a running server has them after its first request."""
    key = Fernet.generate_key()
    for future in [cache.encrypt_chunk(key, [b"x"] * 5000) for _ in range(cache.workers * 2)]:
        future.result()


def _owner(app: Any) -> dict[str, str]:
    from privacy_api.services.users import create_user

    with app.extensions["privacy_api"].db.transaction() as s:
        _, key = create_user(s, "bench-owner", "owner")
    return {"Authorization": f"Bearer {key}"}


def _csv_body(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def upload_rate(kind: str, rows: list[dict[str, Any]], batches: int) -> dict[str, float]:
    """Records/s through the real app (HTTP parsing, validation, encryption, insert, commit)."""
    out: dict[str, float] = {}
    bodies = {"json": ("application/json", orjson.dumps(rows)), "csv": ("text/csv", _csv_body(rows))}
    with database(kind) as url:
        app = make_app(url)
        client = app.test_client()
        headers = _owner(app)
        ds = client.post("/v1/datasets", json={"name": "bench", "columns": DEMO_COLUMNS},
                         headers=headers).get_json()["id"]
        # warm-up: starts the encryption worker processes once, as a running server would
        client.post(f"/v1/datasets/{ds}/records", data=bodies["json"][1][:2] + b"]",
                    content_type="application/json", headers=headers)
        _warm(app.extensions["privacy_api"].cache)
        for fmt, (ctype, body) in bodies.items():
            t = time.perf_counter()
            for _ in range(batches):
                r = client.post(f"/v1/datasets/{ds}/records", data=body, content_type=ctype,
                                headers=headers)
                assert r.status_code == 201, r.get_json()
            out[fmt] = batches * len(rows) / (time.perf_counter() - t)
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()
    return out


def cold_load(kind: str, n: int) -> dict[str, float]:
    from sqlalchemy import select

    from privacy_api.storage.models import Dataset

    rows = synthetic_patients(100_000)
    body = orjson.dumps(rows)
    out: dict[str, float] = {}
    with database(kind) as url:
        app = make_app(url)
        client = app.test_client()
        headers = _owner(app)
        ds = client.post("/v1/datasets", json={"name": "bench", "columns": DEMO_COLUMNS},
                         headers=headers).get_json()["id"]
        for _ in range(n // len(rows)):
            client.post(f"/v1/datasets/{ds}/records", data=body, content_type="application/json",
                        headers=headers)
        st = app.extensions["privacy_api"]
        st.cache.close()
        for workers in sorted({1, os.cpu_count() or 1}):
            app2 = make_app(url, master_keys=st.settings.master_keys, decrypt_workers=workers)
            st2 = app2.extensions["privacy_api"]
            # start the worker processes first: a server has them warm after its first query
            _warm(st2.cache)
            with st2.db.sessions() as s:
                dataset = s.scalar(select(Dataset).where(Dataset.id == ds))
                assert dataset is not None
                t = time.perf_counter()
                cols = st2.columns_for(s, dataset)
                out[f"{workers} worker(s)"] = time.perf_counter() - t
            assert cols.n_rows == n
            st2.cache.close()
            st2.db.dispose()
        st.db.dispose()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = p.parse_args(argv)
    n_batch, batches, n_cold = (20_000, 1, 200_000) if args.quick else (100_000, 2, 1_000_000)
    enc, dec = raw_fernet(50_000 if args.quick else 200_000)
    batch_enc, batch_dec = batched_fernet(50_000 if args.quick else 200_000)
    kinds = ["sqlite"] + (["postgresql"] if pg_available() else [])
    rows = synthetic_patients(n_batch)
    upload_rows = []
    for kind in kinds:
        r = upload_rate(kind, rows, batches)
        upload_rows.append([kind, "JSON", r["json"], "≥ 40,000"])
        upload_rows.append([kind, "CSV", r["csv"], "≥ 40,000"])
    upload_rows.append(["(raw Fernet encrypt, 1 core)", "-", enc, "-"])
    upload_rows.append(["(batched Fernet encrypt, 1 core)", "-", batch_enc, "-"])
    print_table(f"Upload throughput ({batches}×{n_batch:,} records per format, via HTTP)",
                ["database", "format", "records/s", "target"], upload_rows)
    cold_rows = []
    for kind in kinds:
        for label, secs in cold_load(kind, n_cold).items():
            target = "≤ 8 s" if n_cold == 1_000_000 else "-"
            cold_rows.append([kind, label, n_cold, secs, n_cold / secs, target])
    cold_rows.append(["(raw Fernet decrypt, 1 core)", "-", n_cold, n_cold / dec, dec, "-"])
    cold_rows.append(["(batched Fernet decrypt, 1 core)", "-", n_cold, n_cold / batch_dec, batch_dec,
                      "-"])
    print_table(f"Cold decrypt of {n_cold:,} records into NumPy columns ({os.cpu_count()} cores)",
                ["database", "workers", "records", "seconds", "records/s", "target"], cold_rows)


if __name__ == "__main__":
    main()
