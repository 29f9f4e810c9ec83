from __future__ import annotations

import json

from sqlalchemy import func, select

from privacy_api.storage.models import Budget, Record
from tests.helpers import PATIENTS_SCHEMA, patient_rows


def record_count(api) -> int:
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        return s.scalar(select(func.count()).select_from(Record))


def test_create_dataset_validates_the_whole_schema_at_once(api):
    _, owner = api.user("o", "owner")
    bad = {"name": "x", "columns": [
        {"name": "a", "type": "float"},
        {"name": "b", "type": "int", "lower": 5, "upper": 1},
        {"name": "c", "type": "category", "categories": []},
        {"name": "a", "type": "bool"},
        {"name": "1bad", "type": "bool"},
    ], "privacy_unit": {"column": "zzz", "max_rows": 1}}
    resp = api.as_(owner).post("/v1/datasets", json=bad)
    assert resp.status_code == 422
    details = resp.get_json()["details"]
    assert set(details) >= {"columns.0", "columns.1", "columns.2", "columns.3", "columns.4",
                            "privacy_unit.column"}


def test_upload_json_ndjson_csv_and_versions(api):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner)
    o = api.as_(owner)
    r1 = o.post(f"/v1/datasets/{ds}/records", json=patient_rows(10))
    assert r1.status_code == 201 and r1.get_json() == {"inserted": 10, "version": 1}
    nd = "\n".join(json.dumps(r) for r in patient_rows(5, start=10)) + "\n"
    r2 = o.post(f"/v1/datasets/{ds}/records", data=nd, content_type="application/x-ndjson")
    assert r2.get_json() == {"inserted": 5, "version": 2}
    csv = "smoker,cost,sex,age,patient_id\ntrue,12.5,F,40,c1\n0,99,M,41,c2\n"
    r3 = o.post(f"/v1/datasets/{ds}/records", data=csv, content_type="text/csv")
    assert r3.get_json() == {"inserted": 2, "version": 3}
    meta = o.get(f"/v1/datasets/{ds}").get_json()
    assert meta["rows"] == 17 and meta["version"] == 3


def test_bad_upload_writes_nothing_and_lists_rows(api):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(3))
    rows = patient_rows(6, start=3)
    rows[1]["age"] = "old"
    rows[3]["sex"] = "X"
    rows[4]["cost"] = float("nan")
    rows[5]["extra"] = 1
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records",
                               data=json.dumps(rows, allow_nan=True),
                               content_type="application/json")
    assert resp.status_code in (400, 422)
    if resp.status_code == 422:
        listed = {e["row"] for e in resp.get_json()["details"]["rows"]}
        assert listed == {1, 3, 5} or listed == {1, 3, 4, 5}
    bad_csv = "patient_id,age,sex,cost,smoker\nq1,3,F,2.5,true\nq2,x,F,2.5,true\nq3,1,F\n"
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=bad_csv, content_type="text/csv")
    assert resp.status_code == 422
    assert {e["row"] for e in resp.get_json()["details"]["rows"]} == {1, 2}
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data="a\n{", content_type="application/x-ndjson")
    assert resp.status_code == 400
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=b"\xff\xfe", content_type="text/csv")
    assert resp.status_code in (400, 422)
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data="x", content_type="text/plain")
    assert resp.status_code == 415
    assert record_count(api) == 3
    assert api.as_(owner).get(f"/v1/datasets/{ds}").get_json()["version"] == 1


def test_visibility_owner_admin_analyst(api):
    _, admin = api.user("root", "admin")
    _, o1 = api.user("o1", "owner")
    _, o2 = api.user("o2", "owner")
    a_id, analyst = api.user("ana", "analyst")
    _, client = api.user("cli", "client")
    d1 = api.dataset(o1, rows=patient_rows(2))
    d2 = api.dataset(o2, {**PATIENTS_SCHEMA, "name": "other"})
    assert [d["id"] for d in api.as_(o1).get("/v1/datasets").get_json()] == [d1]
    assert api.as_(o2).get(f"/v1/datasets/{d1}").status_code == 404
    assert api.as_(o2).post(f"/v1/datasets/{d1}/records", json=patient_rows(1)).status_code == 404
    assert len(api.as_(admin).get("/v1/datasets").get_json()) == 2
    assert api.as_(analyst).get("/v1/datasets").get_json() == []
    assert api.as_(analyst).get(f"/v1/datasets/{d1}").status_code == 404
    assert api.as_(client).get("/v1/datasets").get_json() == []
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        s.add(Budget(user_id=a_id, dataset_id=d2, epsilon_total=10**12, delta_total=0))
    seen = api.as_(analyst).get("/v1/datasets").get_json()
    assert [d["id"] for d in seen] == [d2]
    assert "rows" not in seen[0] and "version" not in seen[0]
    assert "rows" in api.as_(o2).get(f"/v1/datasets/{d2}").get_json()


def test_delete_destroys_key_and_records(api):
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(5))
    assert api.as_(owner).delete(f"/v1/datasets/{ds}").status_code == 204
    assert api.as_(owner).get(f"/v1/datasets/{ds}").status_code == 404
    assert record_count(api) == 0
    from privacy_api.storage.models import DatasetKey
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(DatasetKey)) == 0
