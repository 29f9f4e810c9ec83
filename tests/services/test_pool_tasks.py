"""The decryption pool: its processes import only what decoding needs, and it exits when idle."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from privacy_api.services.datasets import data_cipher
from privacy_api.storage import columns as columns_module
from privacy_api.storage import pool_tasks
from privacy_api.storage.idle_pool import IdlePool
from privacy_api.storage.models import Dataset
from tests.conftest import make_app
from tests.helpers import Api, patient_rows

# Each of these cost a pool process tens of MiB when it imported the app (docs/scaling.md).
HEAVY = ("flask", "apiflask", "scipy", "sklearn", "pandas", "diffprivlib", "tenseal",
         "mechanisms", "privacy_api.app.factory", "privacy_api.storage.dataset_schema")


def test_pool_processes_do_not_import_the_app():
    # One process, so both tasks run in it. The tasks are a pool task and a builtin: a function
    # of this test module would make the child import the test suite (and the app).
    pool = IdlePool(1, idle=60.0)
    try:
        token = pool.submit(pool_tasks.encrypt_plaintexts, Fernet.generate_key(), [b"[1]"])
        assert len(token.result(timeout=120)) == 1
        loaded = pool.submit(eval, "sorted(__import__('sys').modules)").result(timeout=120)
    finally:
        pool.shutdown()
    assert "privacy_api.storage.pool_tasks" in loaded and "numpy" in loaded
    assert [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY] == []


def test_a_pool_process_decodes_a_range_without_sqlalchemy(db_url):
    # SQLAlchemy's core, ORM and the models were ~26 MiB of a pool process's ~52 (issue 14):
    # a pool task reads through the bare driver.
    from privacy_api.storage.models import Record

    assert pool_tasks.RECORDS_TABLE == Record.__tablename__
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    rows = patient_rows(300)
    ds = api.dataset(owner, rows=rows)
    state = app.extensions["privacy_api"]
    with state.db.sessions() as s:
        dataset = s.scalar(select(Dataset).where(Dataset.id == ds))
        inline = state.columns_for(s, dataset)
        data_keys = list(data_cipher(s, state.keyring, ds).keys)
    cache = state.cache
    layout = columns_module._layout(inline.schema)
    pool = IdlePool(1, idle=60.0)
    try:
        source = pool_tasks.source_of(cache.engine)
        n, cols = pool.submit(pool_tasks.decrypt_range, source, ds, 0, 10**9,
                              data_keys, layout).result(timeout=120)
        # twice: the second task reuses the process's connection
        again = pool.submit(pool_tasks.decrypt_range, source, ds, 0, 10**9,
                            data_keys, layout).result(timeout=120)
        loaded = pool.submit(eval, "sorted(__import__('sys').modules)").result(timeout=120)
    finally:
        pool.shutdown()
    assert n == again[0] == 300
    for name in inline.columns:
        np.testing.assert_array_equal(cols[name], inline.columns[name])
    assert [m for m in loaded if m.split(".")[0] == "sqlalchemy"] == []
    assert "privacy_api.storage.models" not in loaded


def test_pool_shuts_down_once_idle_and_starts_again_on_demand():
    pool = IdlePool(1, idle=0.2)
    try:
        assert pool.submit(sum, [1, 2]).result(timeout=120) == 3
        deadline = time.monotonic() + 30
        while pool.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pool.running
        assert pool.submit(sum, [3, 4]).result(timeout=120) == 7
        assert pool.started == 2
    finally:
        pool.shutdown()


TRACKER_SCRIPT = """
import time
from multiprocessing import resource_tracker
from privacy_api.storage.idle_pool import IdlePool

pool = IdlePool(2, idle=0.2)
assert pool.submit(sum, [1, 2]).result(timeout=120) == 3
tracker = resource_tracker._resource_tracker._pid
assert tracker is not None
deadline = time.monotonic() + 30
# running turns False before the shutdown it starts has finished
while resource_tracker._resource_tracker._pid is not None and time.monotonic() < deadline:
    time.sleep(0.05)
assert not pool.running
assert resource_tracker._resource_tracker._pid is None
print(tracker)
"""


def test_an_idle_pool_leaves_no_resource_tracker_behind():
    # a fresh interpreter: this one's other tests start multiprocessing's tracker themselves
    out = subprocess.run([sys.executable, "-c", TRACKER_SCRIPT], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    assert "leaked" not in out.stderr  # nothing was left for the stopped tracker to clean up
    assert not Path(f"/proc/{int(out.stdout)}").exists()  # the tracker process has exited


def _dataset_loaded_by_the_pool(app, monkeypatch) -> int:
    """A 2,000-row dataset whose next load goes through the decryption pool."""
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(2000))
    monkeypatch.setattr(columns_module, "PARALLEL_THRESHOLD", 100)
    monkeypatch.setattr(columns_module, "INLINE_MAX_BYTES", 0)
    return ds


def test_a_parallel_load_leaves_no_pool_running(sqlite_url, monkeypatch):
    app = make_app(sqlite_url, decrypt_workers=2, decrypt_pool_idle_s=0.0)
    ds = _dataset_loaded_by_the_pool(app, monkeypatch)
    cache = app.extensions["privacy_api"].cache
    with app.extensions["privacy_api"].db.sessions() as s:
        data = app.extensions["privacy_api"].columns_for(
            s, s.scalar(select(Dataset).where(Dataset.id == ds)))
    assert data.n_rows == 2000 and np.isfinite(data.columns["cost"]).all()
    assert cache.pool.started >= 1
    deadline = time.monotonic() + 30
    while cache.pool.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cache.pool.running
    cache.close()


def test_a_small_version_loads_inline_without_the_pool(sqlite_url, monkeypatch):
    # Above PARALLEL_THRESHOLD records but below INLINE_MAX_BYTES of columns: the pool's
    # interpreters would cost more memory than the columns (issue 14), so no pool starts.
    app = make_app(sqlite_url, decrypt_workers=2, decrypt_pool_idle_s=0.0)
    api = Api(app)
    _, owner = api.user("o", "owner")
    rows = patient_rows(2000)
    ds = api.dataset(owner, rows=rows)
    monkeypatch.setattr(columns_module, "PARALLEL_THRESHOLD", 100)
    cache = app.extensions["privacy_api"].cache
    started = cache.pool.started  # the upload's encryption may have used it
    with app.extensions["privacy_api"].db.sessions() as s:
        data = app.extensions["privacy_api"].columns_for(
            s, s.scalar(select(Dataset).where(Dataset.id == ds)))
    assert data.n_rows == 2000
    assert data.columns["cost"].sum() == pytest.approx(sum(r["cost"] for r in rows))
    assert cache.pool.started == started
    cache.close()


def test_a_load_lets_its_pool_go_at_once(sqlite_url, monkeypatch):
    """Not after the idle timeout: at the end of the decode, before contribution bounding
    allocates beside the columns (the cold load's peak, docs/scaling.md)."""
    app = make_app(sqlite_url, decrypt_workers=2, decrypt_pool_idle_s=600.0)
    ds = _dataset_loaded_by_the_pool(app, monkeypatch)
    cache = app.extensions["privacy_api"].cache
    cache.pool.submit(sum, [1]).result(timeout=120)  # running (the upload may have started it)
    assert cache.pool.running
    with app.extensions["privacy_api"].db.sessions() as s:
        data = app.extensions["privacy_api"].columns_for(
            s, s.scalar(select(Dataset).where(Dataset.id == ds)))
    assert data.n_rows == 2000
    assert not cache.pool.running  # gone at the load's end, 600 s before its idle timeout
    cache.close()


def test_release_if_idle_keeps_a_pool_with_work_in_flight():
    pool = IdlePool(1, idle=600.0)
    try:
        slow = pool.submit(time.sleep, 1.0)
        assert pool.release_if_idle() is False and pool.running
        slow.result(timeout=120)
        deadline = time.monotonic() + 30
        while not pool.release_if_idle() and time.monotonic() < deadline:
            time.sleep(0.05)  # the done callback runs just after result() returns
        assert not pool.running
    finally:
        pool.shutdown()
