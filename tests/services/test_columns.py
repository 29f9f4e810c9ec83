"""The decrypted column cache: parallel decryption, invalidation, memory bound, bounding."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from privacy_api.storage import columns as columns_module
from privacy_api.storage.models import Dataset
from tests.conftest import make_app
from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows


def _load(app, ds_id):
    st = app.extensions["privacy_api"]
    with st.db.sessions() as s:
        return st.columns_for(s, s.scalar(select(Dataset).where(Dataset.id == ds_id)))


def test_parallel_decryption_matches_inline(sqlite_url, monkeypatch):
    app = make_app(sqlite_url, decrypt_workers=2)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(3000))
    inline = _load(app, ds)
    app.extensions["privacy_api"].cache.invalidate(ds)
    monkeypatch.setattr(columns_module, "PARALLEL_THRESHOLD", 100)
    monkeypatch.setattr(columns_module, "INLINE_MAX_BYTES", 0)
    parallel = _load(app, ds)
    assert parallel is not inline and parallel.n_rows == inline.n_rows == 3000
    for name in inline.columns:
        np.testing.assert_array_equal(parallel.columns[name], inline.columns[name])
    app.extensions["privacy_api"].cache.close()


def test_upload_invalidates_and_memory_is_bounded(sqlite_url):
    app = make_app(sqlite_url, cache_max_bytes=1)
    api = Api(app)
    _, owner = api.user("o", "owner")
    d1 = api.dataset(owner, rows=patient_rows(50))
    d2 = api.dataset(owner, {**PATIENTS_SCHEMA, "name": "b"}, rows=patient_rows(20))
    first = _load(app, d1)
    assert _load(app, d1) is first  # warm: no second decryption
    api.as_(owner).post(f"/v1/datasets/{d1}/records", json=patient_rows(5, start=50))
    second = _load(app, d1)
    assert second.n_rows == 55 and second.version == first.version + 1
    cache = app.extensions["privacy_api"].cache
    _load(app, d2)
    # over the byte bound, only the most recent entry is kept
    assert len(cache._entries) == 1


def test_contribution_bounding_keeps_first_rows_per_unit(sqlite_url):
    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    schema = {**PATIENTS_SCHEMA, "privacy_unit": {"column": "patient_id", "max_rows": 2}}
    rows = patient_rows(10)
    for i, r in enumerate(rows):
        r["patient_id"] = "same" if i < 6 else f"u{i}"
    ds = api.dataset(owner, schema, rows=rows)
    data = _load(app, ds)
    assert data.n_rows == 2 + 4 and data.bounded_away == 4
    # the kept rows of the heavy unit are its first two uploads (cost of rows 0 and 1)
    assert list(data.columns["cost"][:2]) == [rows[0]["cost"], rows[1]["cost"]]


def test_parallel_load_with_bounding_and_an_append_matches_inline(sqlite_url, monkeypatch):
    # The loading thread decodes every other range itself, the pool the rest: placed in id
    # order, bounded after, the incremental load on top of the full one equals inline loads.
    app = make_app(sqlite_url, decrypt_workers=2)
    api = Api(app)
    _, owner = api.user("o", "owner")
    schema = {**PATIENTS_SCHEMA, "privacy_unit": {"column": "patient_id", "max_rows": 2}}
    rows = patient_rows(3000)
    for i, r in enumerate(rows):
        r["patient_id"] = f"u{i % 700}"  # 4-5 rows per unit: some are bounded away
    ds = api.dataset(owner, schema, rows=rows)
    cache = app.extensions["privacy_api"].cache
    inline = _load(app, ds)
    cache.invalidate(ds)
    monkeypatch.setattr(columns_module, "PARALLEL_THRESHOLD", 100)
    monkeypatch.setattr(columns_module, "INLINE_MAX_BYTES", 0)
    parallel = _load(app, ds)
    assert parallel is not inline and parallel.n_rows == inline.n_rows == 1400
    for name in inline.columns:
        np.testing.assert_array_equal(parallel.columns[name], inline.columns[name])
    more = patient_rows(1000, start=3000)
    for i, r in enumerate(more):
        r["patient_id"] = f"u{i % 900}"
    api.as_(owner).post(f"/v1/datasets/{ds}/records", json=more)
    incremental = _load(app, ds)
    assert cache.stats["incremental_loads"] == 1
    cache.invalidate(ds)
    monkeypatch.setattr(columns_module, "PARALLEL_THRESHOLD", 10**9)
    full = _load(app, ds)
    assert incremental.n_rows == full.n_rows and incremental.bounded_away == full.bounded_away
    for name in full.columns:
        np.testing.assert_array_equal(incremental.columns[name], full.columns[name])
    cache.close()


@pytest.mark.parametrize("n", [0])
def test_empty_dataset_loads(sqlite_url, n):
    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner)
    assert _load(app, ds).n_rows == n


def test_upload_encrypts_chunks_on_worker_processes(sqlite_url):
    app = make_app(sqlite_url, decrypt_workers=2)
    api = Api(app)
    _, owner = api.user("o", "owner")
    rows = patient_rows(20_000)
    ds = api.dataset(owner, rows=rows)
    bad = patient_rows(20_000, start=20_000)
    bad[19_999]["age"] = "x"  # the last chunk is bad: nothing of the upload may be written
    assert api.as_(owner).post(f"/v1/datasets/{ds}/records", json=bad).status_code == 422
    data = _load(app, ds)
    assert data.n_rows == 20_000
    assert data.columns["cost"].sum() == pytest.approx(sum(r["cost"] for r in rows))
    app.extensions["privacy_api"].cache.close()


def test_unit_hashes_are_the_stable_unit_hash():
    from privacy_api.storage.dataset_schema import unit_hash, unit_hashes

    values = ["P0000001", "", "é", "x" * 200, "0", "a\x00"]
    assert unit_hashes(values).tolist() == [unit_hash(v) for v in values]
    assert unit_hash("P0000001") == 2658896607382469239  # stable: no per-process salt
    assert unit_hashes([]).dtype == np.int64 and len(unit_hashes([])) == 0


def test_loading_in_id_ranges_matches_one_pass(sqlite_url, monkeypatch):
    import gc

    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(3000))
    one_pass = _load(app, ds)
    app.extensions["privacy_api"].cache.invalidate(ds)
    monkeypatch.setattr(columns_module, "RANGE_ROWS", 250)
    assert len(columns_module._id_ranges(1, 3001, 3000, 1)) == 12
    ranged = _load(app, ds)
    assert ranged is not one_pass and ranged.n_rows == 3000
    for name in one_pass.columns:
        np.testing.assert_array_equal(ranged.columns[name], one_pass.columns[name])
    assert gc.isenabled()  # paused only while decoding
