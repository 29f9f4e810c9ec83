"""The decrypted column cache shared by a host's workers (issue 14): one copy mapped by every
worker, one loader per version, appends decrypting only their new records, deletions removing
the copy everywhere, and a killed loader leaving nothing half written that others read.

Workers are real spawned processes with their own app on the same database (SQLite file and
PostgreSQL) and the same shared directory (tmpfs, set for the test process by conftest).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from privacy_api.storage import columns as columns_module
from privacy_api.storage import pool_tasks
from privacy_api.storage.models import Dataset, DatasetVersion
from privacy_api.storage.shared_arrays import NotRamBacked, SharedArrays
from tests.conftest import MASTER_KEY, make_app
from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows
from tests.services.cache_worker import Worker

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

UNIT_SCHEMA = {**PATIENTS_SCHEMA, "privacy_unit": {"column": "patient_id", "max_rows": 3}}


def _rows(n: int, start: int, units: int) -> list[dict]:
    rows = patient_rows(n, start=start)
    for i, r in enumerate(rows):
        r["patient_id"] = f"u{(start + i) % units}"  # units recur across uploads
    return rows


def _load(app, ds_id):
    st = app.extensions["privacy_api"]
    with st.db.sessions() as s:
        return st.columns_for(s, s.scalar(select(Dataset).where(Dataset.id == ds_id)))


@pytest.fixture
def counted(monkeypatch):
    """Counts every token the cache decrypts (in this process: loads run inline)."""
    seen = {"tokens": 0}
    real = pool_tasks._decrypt

    def counting(keys, tokens):
        seen["tokens"] += len(tokens)
        return real(keys, tokens)

    monkeypatch.setattr(pool_tasks, "_decrypt", counting)
    return seen


def test_the_cache_is_shared_and_bundles_are_owner_only(db_url):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(500))
    data = _load(app, ds)
    store = app.extensions["privacy_api"].cache.store
    assert store is not None and data.bundles
    path = data.bundles[0].path
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert not data.columns["cost"].flags.writeable  # mapped read-only
    assert not list(path.parent.glob(".tmp.*"))


def test_append_decrypts_only_new_records_and_equals_a_full_load(db_url, counted):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, UNIT_SCHEMA, rows=_rows(400, 0, 150))  # units with 2-3 rows
    first = _load(app, ds)
    assert counted["tokens"] == 400 and first.exact
    for step in range(2):  # two appends in a row: a chain of append versions
        rows = _rows(120, 400 + 120 * step, 170)  # heavy units get no more; new units do
        resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", json=rows)
        assert resp.status_code == 201
        counted["tokens"] = 0
        incremental = _load(app, ds)
        assert counted["tokens"] == 120  # only the appended records were decrypted
    cache = app.extensions["privacy_api"].cache
    assert cache.stats["incremental_loads"] == 2 and cache.stats["full_loads"] == 1
    with app.extensions["privacy_api"].db.sessions() as s:
        kinds = s.scalars(select(DatasetVersion.kind).where(DatasetVersion.dataset_id == ds)
                          .order_by(DatasetVersion.version)).all()
    assert kinds == ["append", "append", "append"]

    cache.invalidate(ds)
    counted["tokens"] = 0
    full = _load(app, ds)
    assert counted["tokens"] == 640 and cache.stats["full_loads"] == 2
    assert incremental is not full and incremental.n_rows == full.n_rows < 640
    assert incremental.bounded_away == full.bounded_away > 0
    for name in full.columns:  # same rows, same order
        np.testing.assert_array_equal(incremental.columns[name], full.columns[name])
    # every unit keeps at most max_rows rows
    _, counts = np.unique(full.columns["patient_id"], return_counts=True)
    assert counts.max() == 3


def test_a_version_not_marked_append_loads_in_full(db_url, counted):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(200))
    _load(app, ds)
    api.as_(owner).post(f"/v1/datasets/{ds}/records", json=patient_rows(50, start=200))
    st = app.extensions["privacy_api"]
    with st.db.transaction() as s:  # as an erasure or any other kind of version would be
        s.execute(update(DatasetVersion).where(DatasetVersion.dataset_id == ds,
                                               DatasetVersion.version == 2).values(kind="full"))
    counted["tokens"] = 0
    assert _load(app, ds).n_rows == 250
    assert counted["tokens"] == 250 and st.cache.stats["incremental_loads"] == 0


def test_two_workers_share_one_copy(db_url):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(20_000))
    workers = [Worker(db_url, MASTER_KEY) for _ in range(2)]
    try:
        a = workers[0].call("load", ds)
        b = workers[1].call("load", ds)
        assert a["n_rows"] == b["n_rows"] == 20_000 and a["cost_sum"] == b["cost_sum"]
        assert a["path"] == b["path"] and a["inode"] == b["inode"]
        # one decryption on the host: the second worker mapped the first one's copy
        assert a["stats"]["full_loads"] == 1 and b["stats"]["full_loads"] == 0
        assert b["stats"]["mapped"] == 1 and b["stats"]["decrypted_records"] == 0
        size_kb = Path(a["path"]).stat().st_size / 1024
        maps = [w.call("maps", a["path"]) for w in workers]
        for m in maps:
            assert len(m) == 1 and not m[0]["deleted"]
            # both map the same pages: each is charged about half of them (proportional set)
            assert m[0]["rss"] > 0.9 * size_kb
            assert m[0]["pss"] < 0.6 * m[0]["rss"]
        # derived artefacts are shared too: built by one, mapped by the other
        da = workers[0].call("quantile_index", (ds, a["version"]))
        db = workers[1].call("quantile_index", (ds, a["version"]))
        assert len(da) == len(db) == 2 and da == db
    finally:
        for w in workers:
            w.stop()


def test_deleting_a_dataset_removes_its_copy_in_every_worker(db_url):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(300))
    workers = [Worker(db_url, MASTER_KEY) for _ in range(2)]
    try:
        loaded = [w.call("load", ds) for w in workers]
        path = Path(loaded[0]["path"])
        assert path.exists() and all(len(w.call("maps", str(path))) == 1 for w in workers)
        assert api.as_(owner).delete(f"/v1/datasets/{ds}").status_code == 204
        # at once: the file is gone from the host (by this process's app, a third worker)
        assert not path.exists()
        assert not [p for p in path.parent.iterdir() if p.name.startswith(f"{ds}-")]
        for w in workers:  # at their next query, the others drop their mapping
            assert w.call("peek", (ds, loaded[0]["version"])) is False
            assert w.call("maps", str(path)) == []
    finally:
        for w in workers:
            w.stop()


def test_a_loader_killed_mid_load_leaves_no_half_copy(db_url, tmp_path):
    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    rows = patient_rows(2000)
    ds = api.dataset(owner, rows=rows)
    marker = tmp_path / "paused"
    doomed = Worker(db_url, MASTER_KEY, {columns_module.PAUSE_ENV: str(marker)})
    other = Worker(db_url, MASTER_KEY)
    store = app.extensions["privacy_api"].cache.store
    assert store is not None
    # earlier tests in this process may have left copies of another dataset with this id
    # (under other tags): only the files this load makes count
    before = set(store.dir.glob(f"{ds}-*.arr"))
    try:
        doomed.send("load", ds)
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert time.monotonic() < deadline and doomed.process.is_alive()
            time.sleep(0.05)
        half = list(store.dir.glob(f".tmp.{ds}-*"))
        assert len(half) == 1  # mid-load: a temporary file, under no name a reader opens
        assert not set(store.dir.glob(f"{ds}-*.arr")) - before
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.join(10)
        got = other.call("load", ds)  # the lock died with its holder
        assert got["n_rows"] == 2000 and got["stats"]["full_loads"] == 1
        assert got["cost_sum"] == pytest.approx(sum(r["cost"] for r in rows))
        assert not half[0].exists()  # the dead loader's file was cleaned
        assert set(store.dir.glob(f"{ds}-*.arr")) - before
    finally:
        doomed.stop()
        other.stop()


def test_the_byte_bound_applies_to_the_host(sqlite_url):
    app = make_app(sqlite_url, cache_max_bytes=1)
    api = Api(app)
    _, owner = api.user("o", "owner")
    d1 = api.dataset(owner, rows=patient_rows(100))
    d2 = api.dataset(owner, {**PATIENTS_SCHEMA, "name": "b"}, rows=patient_rows(100))
    worker = Worker(sqlite_url, MASTER_KEY)
    try:
        first = worker.call("load", d1)
        assert Path(first["path"]).exists()
        _load(app, d2)  # over the bound: the other version's copy goes, for every worker
        assert not Path(first["path"]).exists()
        assert worker.call("peek", (d1, first["version"])) is False
        assert worker.call("maps", first["path"]) == []
    finally:
        worker.stop()


def test_derived_arrays_written_after_a_load_count_against_the_host_bound(sqlite_url):
    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    d1 = api.dataset(owner, rows=patient_rows(100))
    d2 = api.dataset(owner, {**PATIENTS_SCHEMA, "name": "b"}, rows=patient_rows(100))
    first, second = _load(app, d1), _load(app, d2)
    cache = app.extensions["privacy_api"].cache
    assert cache.store is not None
    os.utime(first.bundles[0].path, (1, 1))  # d1 is the least recently used copy
    cache.max_bytes = sum(size for _, size, _ in cache.store.usage())  # both fit, no more
    second.shifted("cost", 0.0, 10000.0)  # a derived bundle for d2: over the bound
    assert not first.bundles[0].path.exists()
    assert all(b.path.exists() for b in second.bundles) and len(second.bundles) == 2


def test_an_older_version_is_removed_when_a_newer_one_loads(sqlite_url):
    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(100))
    old = _load(app, ds)
    api.as_(owner).post(f"/v1/datasets/{ds}/records", json=patient_rows(10, start=100))
    new = _load(app, ds)
    assert new.n_rows == 110 and not old.bundles[0].path.exists()
    assert new.bundles[0].path.exists()


def test_a_disk_backed_directory_is_refused(tmp_path, sqlite_url):
    from privacy_api.storage.shared_arrays import is_tmpfs

    if is_tmpfs(tmp_path):
        pytest.skip(reason="the temporary directory is itself tmpfs here, so no disk-backed one to refuse")
    with pytest.raises(NotRamBacked):
        SharedArrays(tmp_path / "cache")
    # the app then falls back to a per-process cache (and says so in its log)
    app = make_app(sqlite_url, shared_cache_dir=str(tmp_path))
    assert app.extensions["privacy_api"].cache.store is None


def test_a_key_rotation_loads_in_full_and_drops_the_old_copy(db_url, counted):
    from privacy_api.services.datasets import reencrypt_batch, start_dataset_key_rotation

    app = make_app(db_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(300))
    st = app.extensions["privacy_api"]
    before = _load(app, ds)
    with st.db.transaction() as s:
        start_dataset_key_rotation(s, st.keyring, ds)
    while True:
        with st.db.transaction() as s:
            if not reencrypt_batch(s, st.keyring, ds, batch_size=100):
                break
    # this worker's copy stays right (rotation changes no plaintext); a worker without one
    # builds a copy of its own under the new keys, decrypted anew, and drops the old one
    assert _load(app, ds) is before
    st.cache._entries.clear()
    counted["tokens"] = 0
    after = _load(app, ds)
    assert after.version == before.version and after.name != before.name
    assert counted["tokens"] == 300
    np.testing.assert_array_equal(after.columns["cost"], before.columns["cost"])
    assert not before.bundles[0].path.exists() and after.bundles[0].path.exists()
