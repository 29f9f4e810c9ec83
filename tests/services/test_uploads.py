"""Uploads stream their records (into a COPY on PostgreSQL) while the body is parsed: a bad row
late in the body still writes nothing, and concurrent uploads to one dataset all land."""

from __future__ import annotations

import csv
import io
import threading
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from privacy_api.services.uploads import CHUNK_ROWS
from privacy_api.storage.models import Dataset, Record
from tests.helpers import Api, patient_rows

N = CHUNK_ROWS * 3 + 17  # several chunks: the first are stored before the last is parsed


def _counts(api: Api, ds: int) -> tuple[int, int, int]:
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        records = s.scalar(select(func.count()).select_from(Record).where(Record.dataset_id == ds))
        dataset = s.get(Dataset, ds)
        assert dataset is not None and records is not None
        return records, dataset.rows, dataset.version


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_bad_row_at_the_end_writes_nothing(api: Api, fmt: str) -> None:
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(5))
    rows = patient_rows(N, start=5)
    rows[-1]["age"] = "old"
    body, ctype = (orjson.dumps(rows), "application/json") if fmt == "json" else (_csv(rows), "text/csv")
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=body, content_type=ctype)
    assert resp.status_code == 422
    assert [e["row"] for e in resp.get_json()["details"]["rows"]] == [N - 1]
    assert _counts(api, ds) == (5, 5, 1)
    # the connection and the dataset are fine afterwards
    rows[-1]["age"] = 40
    body = orjson.dumps(rows) if fmt == "json" else _csv(rows)
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=body, content_type=ctype)
    assert resp.status_code == 201 and resp.get_json() == {"inserted": N, "version": 2}
    assert _counts(api, ds) == (5 + N, 5 + N, 2)


def test_concurrent_uploads_to_one_dataset_all_land(api: Api) -> None:
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner)
    uploads = 4
    # one key, 4 at once: above the per-key cap of concurrent uploads (tests/hardening/
    # test_work_limits.py), which this storage test is not about
    api.app.extensions["privacy_api_key_slots"].limit = uploads
    bodies = [orjson.dumps(patient_rows(N, start=i * N)) for i in range(uploads)]
    start = threading.Barrier(uploads)
    results: list[tuple[int, dict]] = []

    def upload(body: bytes) -> None:
        client = api.app.test_client()
        start.wait()
        resp = client.post(f"/v1/datasets/{ds}/records", data=body, content_type="application/json",
                           headers={"Authorization": f"Bearer {owner}"})
        results.append((resp.status_code, resp.get_json()))

    threads = [threading.Thread(target=upload, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [code for code, _ in results] == [201] * uploads, results
    assert sorted(body["version"] for _, body in results) == list(range(1, uploads + 1))
    assert _counts(api, ds) == (uploads * N, uploads * N, uploads)
    st = api.app.extensions["privacy_api"]
    with st.db.sessions() as s:
        dataset = s.get(Dataset, ds)
        assert dataset is not None
        assert st.columns_for(s, dataset).n_rows == uploads * N


def test_an_upload_overtaken_by_a_finished_key_rotation_stores_nothing(api: Api) -> None:
    """The rotation destroys the key the upload's records are under before they are stored:
    the upload must answer 409 and store nothing, never records nobody can read."""
    from privacy_api.services import datasets as ds_service

    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(10))
    st = api.app.extensions["privacy_api"]
    body = orjson.dumps(patient_rows(N, start=1000))

    def rotate_to_completion() -> None:
        with st.db.transaction(immediate=True) as s:
            ds_service.start_dataset_key_rotation(s, st.keyring, ds)
        while True:
            with st.db.transaction(immediate=True) as s:
                if not ds_service.reencrypt_batch(s, st.keyring, ds):
                    break

    class RotatesAtTheEnd(io.BytesIO):
        """The body; at its first read (the upload has its data key, no row is stored yet) a
        key rotation runs to completion on another connection."""

        rotated = False

        def _maybe_rotate(self) -> None:
            if not self.rotated:
                self.rotated = True
                t = threading.Thread(target=rotate_to_completion)  # its own connection
                t.start()
                t.join(60)

        def read(self, size: int | None = -1) -> bytes:
            self._maybe_rotate()
            return super().read(size)

        def readinto(self, buf: Any) -> int:
            self._maybe_rotate()
            return super().readinto(buf)

    resp = api.app.test_client().post(
        f"/v1/datasets/{ds}/records", input_stream=RotatesAtTheEnd(body),
        content_length=len(body), content_type="application/json",
        headers={"Authorization": f"Bearer {owner}"})
    assert resp.status_code == 409, resp.get_json()
    assert resp.get_json()["code"] == "conflict"
    assert _counts(api, ds) == (10, 10, 1)
    # and the dataset still answers: every stored record is readable under the live key
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=body,
                               content_type="application/json")
    assert resp.status_code == 201
    assert _counts(api, ds) == (10 + N, 10 + N, 2)
