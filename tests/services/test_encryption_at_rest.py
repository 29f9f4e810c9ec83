"""Records exist only as Fernet ciphertext; tampering is detected; rotations keep data readable."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text, update

from privacy_api.services import datasets as ds_service
from privacy_api.storage.columns import CorruptRecord
from privacy_api.storage.models import Dataset, Record
from tests.conftest import make_app
from tests.helpers import Api, patient_rows

CANARY_ID = "CANARY-PATIENT-7f3a9c"
CANARY_COST = 8765.4321


def _canary_rows() -> list[dict]:
    rows = patient_rows(200)
    rows[17] = {"patient_id": CANARY_ID, "age": 77, "sex": "F", "cost": CANARY_COST, "smoker": True}
    return rows


def _columns(app, ds_id: int):
    st = app.extensions["privacy_api"]
    st.cache.invalidate(ds_id)
    with st.db.transaction() as s:
        return st.columns_for(s, s.get(Dataset, ds_id))


def test_database_holds_no_plaintext(api, db_url):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=_canary_rows())
    canaries = [CANARY_ID.encode(), b"8765.4321", b"CANARY"]
    st = api.app.extensions["privacy_api"]
    if db_url.startswith("sqlite"):
        st.db.dispose()  # checkpoint WAL into the file, then scan every byte on disk
        path = Path(db_url.removeprefix("sqlite:///"))
        blobs = [p.read_bytes() for p in path.parent.glob(path.name + "*")]
    else:
        with st.db.transaction() as s:
            blobs = [bytes(t) for t in s.scalars(select(Record.token))]
            blobs += [str(r).encode() for r in s.execute(text("select * from datasets")).all()]
    for blob in blobs:
        for canary in canaries:
            assert canary not in blob
    # and the values are really there, encrypted: the cache decrypts them back
    cols = _columns(api.app, ds)
    assert CANARY_COST in cols.columns["cost"]


def test_each_record_is_one_fernet_token_under_the_dataset_key(api):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(3))
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        tokens = s.scalars(select(Record.token)).all()
        cipher = ds_service.data_cipher(s, st.keyring, ds)
    assert len(tokens) == 3
    for token in tokens:
        assert bytes(token).startswith(b"gAAAA")
        assert orjson.loads(cipher.decrypt(bytes(token)))[0].startswith("p")
        # the master key itself cannot read a record: it only wraps data keys
        with pytest.raises(Exception):  # noqa: B017
            Fernet(st.settings.master_keys[0]).decrypt(bytes(token))


def test_tampered_ciphertext_is_detected(api):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(20))
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        rid, token = s.execute(select(Record.id, Record.token).limit(1)).one()
        raw = bytearray(bytes(token))
        raw[60] = ord("A") if raw[60] != ord("A") else ord("B")
        s.execute(update(Record).where(Record.id == rid).values(token=bytes(raw)))
    with pytest.raises(CorruptRecord):
        _columns(api.app, ds)


def test_records_stay_readable_across_master_and_dataset_key_rotation(db_url):
    old_master = Fernet.generate_key()
    app = make_app(db_url, master_keys=[old_master])
    api = Api(app)
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(300))
    before = _columns(app, ds).columns["cost"].copy()
    app.extensions["privacy_api"].db.dispose()

    # 1. master rotation: new key first, old key still listed; rewrap; then drop the old key
    new_master = Fernet.generate_key()
    app2 = make_app(db_url, master_keys=[new_master, old_master])
    st2 = app2.extensions["privacy_api"]
    with st2.db.transaction() as s:
        assert ds_service.rewrap_dataset_keys(s, st2.keyring) == 1
    st2.db.dispose()
    app3 = make_app(db_url, master_keys=[new_master])
    np.testing.assert_array_equal(_columns(app3, ds).columns["cost"], before)

    # 2. dataset key rotation in small batches, interrupted halfway and resumed; an upload
    #    lands mid-rotation and reads keep working throughout
    st3 = app3.extensions["privacy_api"]
    with st3.db.transaction(immediate=True) as s:
        assert ds_service.start_dataset_key_rotation(s, st3.keyring, ds) == 2
    with st3.db.transaction(immediate=True) as s:
        assert ds_service.reencrypt_batch(s, st3.keyring, ds, batch_size=100) == 100
    np.testing.assert_array_equal(_columns(app3, ds).columns["cost"], before)
    with st3.db.transaction() as s:
        owner_user = s.scalar(select(Dataset)).owner_id
        from privacy_api.storage.models import User
        ds_service.upload_records(s, st3.keyring, s.get(User, owner_user), ds, "application/json",
                                  io.BytesIO(orjson.dumps(patient_rows(5, start=900))))
    with st3.db.transaction() as s:
        assert ds_service.stale_record_count(s, ds) == 200
    while True:
        with st3.db.transaction(immediate=True) as s:
            if not ds_service.reencrypt_batch(s, st3.keyring, ds, batch_size=64):
                break
    cols = _columns(app3, ds).columns["cost"]
    np.testing.assert_array_equal(cols[:300], before)
    assert len(cols) == 305
    with st3.db.transaction() as s:
        versions = set(s.scalars(select(Record.key_version)))
        from privacy_api.storage.models import DatasetKey
        keys = s.scalars(select(DatasetKey.version)).all()
    assert versions == {2} and keys == [2]
    st3.db.dispose()


def test_demo_dataset_is_realistic(sqlite_url):
    app = make_app(sqlite_url)
    st = app.extensions["privacy_api"]
    from privacy_api.app.demo import ensure_demo_dataset
    with st.db.transaction() as s:
        ds, created = ensure_demo_dataset(s, st.keyring, 2000)
    assert created and ds.rows == 2000
    cols = _columns(app, ds.id)
    assert cols.n_rows < 2000 or cols.bounded_away == 0  # bounding to 3 stays per patient
    assert 20 < cols.columns["age"].mean() < 70
    with st.db.transaction() as s:
        _, again = ensure_demo_dataset(s, st.keyring, 2000)
    assert not again
    st.db.dispose()
