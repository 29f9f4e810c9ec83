"""Erasure of a data subject, as an owner and an analyst would see it (issue 15, part 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from privacy_api.storage.models import AuditEvent, Record
from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows

VISITS_SCHEMA: dict[str, Any] = {
    "name": "visits",
    "columns": [
        {"name": "patient_id", "type": "id"},
        {"name": "age", "type": "int", "lower": 0, "upper": 100},
        {"name": "cost", "type": "float", "lower": 0, "upper": 1000},
    ],
    "privacy_unit": {"column": "patient_id", "max_rows": 3},
}

PLAIN_SCHEMA: dict[str, Any] = {
    "name": "readings",
    "columns": [{"name": "value", "type": "int", "lower": 0, "upper": 100}],
    "privacy_unit": None,
}


def _setup(api: Api) -> tuple[str, str, str, int]:
    _, admin = api.user("root", "admin")
    _, owner = api.user("owner", "owner")
    aid, analyst = api.user("ana", "analyst")
    # 200 patients of age < 90, 20 of them ("old<i>") with 3 visits each at age 95
    rows = [{"patient_id": f"p{i}", "age": i % 90, "cost": 10.0} for i in range(200)]
    rows += [{"patient_id": f"old{i}", "age": 95, "cost": 20.0} for i in range(20) for _ in range(3)]
    ds = api.dataset(owner, VISITS_SCHEMA, rows)
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 1000}).status_code == 200
    return admin, owner, analyst, ds


def _old_count(api: Api, analyst: str, ds: int) -> int:
    # ε = 10, sensitivity max_rows = 3: the geometric noise exceeds ±15 with probability ~1e-22
    resp = api.as_(analyst).post(f"/v1/datasets/{ds}/query", json={
        "aggregate": "count", "epsilon": 10, "where": [{"column": "age", "op": ">=", "value": 95}]})
    assert resp.status_code == 200, resp.get_json()
    result: int = resp.get_json()["result"]
    return result


def test_erasing_units_removes_them_from_counts_and_makes_a_new_version(api: Api) -> None:
    _, owner, analyst, ds = _setup(api)
    before = _old_count(api, analyst, ds)
    assert abs(before - 60) <= 15
    o = api.as_(owner)
    for i in range(20):
        resp = o.delete(f"/v1/datasets/{ds}/units/old{i}")
        assert resp.status_code == 200, resp.get_json()
        assert resp.get_json()["deleted"] == 3
    meta = o.get(f"/v1/datasets/{ds}").get_json()
    assert meta["rows"] == 200 and meta["version"] == 1 + 20
    after = _old_count(api, analyst, ds)
    assert abs(after) <= 15  # the 60 erased visits are gone from the answer
    # the answer released before the erasure stays released (it was DP): still in the ledger
    ledger = api.as_(analyst).get(f"/v1/queries?dataset_id={ds}").get_json()
    assert len(ledger) == 2 and {e["dataset_version"] for e in ledger} == {1, 21}


def test_erasing_a_unit_with_no_records_is_a_harmless_no_op(api: Api) -> None:
    _, owner, _, ds = _setup(api)
    o = api.as_(owner)
    assert o.delete(f"/v1/datasets/{ds}/units/old0").get_json()["deleted"] == 3
    again = o.delete(f"/v1/datasets/{ds}/units/old0")
    assert again.status_code == 200
    assert again.get_json() == {"deleted": 0, "version": 2, "wal_checkpointed": None}
    assert o.delete(f"/v1/datasets/{ds}/units/nobody%2Fat%20all").get_json()["deleted"] == 0
    assert o.get(f"/v1/datasets/{ds}").get_json()["version"] == 2


def test_erasure_is_audited_without_the_unit_value(api: Api) -> None:
    _, owner, _, ds = _setup(api)
    assert api.as_(owner).delete(f"/v1/datasets/{ds}/units/old7").status_code == 200
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset.erase_unit")).one()
        assert event.target == f"dataset:{ds}" and event.actor_id is not None
        assert event.details["deleted"] == 3 and event.details["version"] == 2
        assert len(event.details["unit_ref"]) == 8
        assert "old7" not in repr(event.details) and event.created_at is not None


def test_only_the_owner_or_an_admin_may_erase(api: Api) -> None:
    admin, owner, analyst, ds = _setup(api)
    _, other = api.user("other", "owner")
    assert api.as_(analyst).delete(f"/v1/datasets/{ds}/units/old1").status_code == 403
    assert api.as_(other).delete(f"/v1/datasets/{ds}/units/old1").status_code == 404
    assert api.as_(None).delete(f"/v1/datasets/{ds}/units/old1").status_code == 401
    assert api.as_(owner).delete(f"/v1/datasets/{ds + 9}/units/old1").status_code == 404
    assert api.as_(admin).delete(f"/v1/datasets/{ds}/units/old1").get_json()["deleted"] == 3
    meta = api.as_(owner).get(f"/v1/datasets/{ds}").get_json()
    assert meta["rows"] == 257


def test_category_and_int_unit_columns(api: Api) -> None:
    _, owner = api.user("owner", "owner")
    schema = {"name": "wards", "columns": [
        {"name": "ward", "type": "category", "categories": ["a", "b"]},
        {"name": "n", "type": "int", "lower": 0, "upper": 10}],
        "privacy_unit": {"column": "ward", "max_rows": 100}}
    ds = api.dataset(owner, schema, [{"ward": "ab"[i % 2], "n": i % 10} for i in range(10)])
    o = api.as_(owner)
    assert o.delete(f"/v1/datasets/{ds}/units/b").get_json()["deleted"] == 5
    assert o.delete(f"/v1/datasets/{ds}/units/zzz").get_json()["deleted"] == 0
    schema = {"name": "people", "columns": [{"name": "person", "type": "int", "lower": 0,
                                             "upper": 1000}],
              "privacy_unit": {"column": "person", "max_rows": 5}}
    ds2 = api.dataset(owner, schema, [{"person": i % 4} for i in range(12)])
    assert o.delete(f"/v1/datasets/{ds2}/units/3").get_json()["deleted"] == 3
    assert o.delete(f"/v1/datasets/{ds2}/units/three").get_json()["deleted"] == 0
    assert o.get(f"/v1/datasets/{ds2}").get_json()["rows"] == 9


def test_a_dataset_without_a_unit_returns_record_ids_and_erases_by_id(api: Api) -> None:
    _, owner = api.user("owner", "owner")
    o = api.as_(owner)
    ds = api.dataset(owner, PLAIN_SCHEMA)
    first = o.post(f"/v1/datasets/{ds}/records", json=[{"value": i} for i in range(5)])
    second = o.post(f"/v1/datasets/{ds}/records", json=[{"value": 50 + i} for i in range(3)])
    assert first.status_code == 201 and second.status_code == 201
    [[a, b]] = first.get_json()["record_ids"]
    [[c, d]] = second.get_json()["record_ids"]
    assert b - a == 4 and d - c == 2 and c > b
    resp = o.delete(f"/v1/datasets/{ds}/records/{c + 1}")
    assert resp.status_code == 200 and resp.get_json()["deleted"] == 1
    assert resp.get_json()["version"] == 3
    assert o.delete(f"/v1/datasets/{ds}/records/{c + 1}").get_json()["deleted"] == 0
    assert o.delete(f"/v1/datasets/{ds}/records/999999999").get_json()["deleted"] == 0
    # another dataset's record id erases nothing here
    ds_other = api.dataset(owner, {**PLAIN_SCHEMA, "name": "other"})
    assert o.delete(f"/v1/datasets/{ds_other}/records/{a}").get_json()["deleted"] == 0
    # the units route needs a privacy unit
    refused = o.delete(f"/v1/datasets/{ds}/units/1")
    assert refused.status_code == 422 and refused.get_json()["code"] == "invalid_request"
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        ids = s.scalars(select(Record.id).where(Record.dataset_id == ds).order_by(Record.id)).all()
    assert list(ids) == [*range(a, b + 1), c, d]
    assert o.get(f"/v1/datasets/{ds}").get_json()["rows"] == 7
    # a dataset with a privacy unit answers no record ids (the unit is the handle)
    ds_units = api.dataset(owner, PATIENTS_SCHEMA)
    up = o.post(f"/v1/datasets/{ds_units}/records", json=patient_rows(3))
    assert "record_ids" not in up.get_json()


def test_erased_tokens_are_gone_from_the_sqlite_files(sqlite_url: str) -> None:
    from tests.conftest import make_app

    app = make_app(sqlite_url)
    try:
        api = Api(app)
        _, owner = api.user("owner", "owner")
        rows = [{"patient_id": f"p{i % 40}", "age": i % 90, "cost": float(i)} for i in range(120)]
        ds = api.dataset(owner, VISITS_SCHEMA, rows)
        st = app.extensions["privacy_api"]
        with st.db.transaction() as s:
            tokens = s.execute(select(Record.id, Record.token).order_by(Record.id)).all()
        erased = [bytes(t) for i, (_, t) in enumerate(tokens) if i % 40 in (3, 17)]
        kept = [bytes(t) for i, (_, t) in enumerate(tokens) if i % 40 not in (3, 17)]
        assert len(erased) == 6 and len(kept) == 114
        o = api.as_(owner)
        for unit in ("p3", "p17"):
            resp = o.delete(f"/v1/datasets/{ds}/units/{unit}")
            assert resp.get_json() == {"deleted": 3, "version": resp.get_json()["version"],
                                       "wal_checkpointed": True}
        path = Path(sqlite_url.removeprefix("sqlite:///"))
        files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
        raw = b"".join(p.read_bytes() for p in files)
        assert not [t for t in erased if t in raw]
        assert all(t in raw for t in kept)
        with st.db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(Record)) == 114
    finally:
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()


def test_record_ids_on_concurrent_free_uploads_cover_exactly_the_stored_rows(api: Api) -> None:
    _, owner = api.user("owner", "owner")
    o = api.as_(owner)
    ds = api.dataset(owner, PLAIN_SCHEMA)
    other = api.dataset(owner, {**PLAIN_SCHEMA, "name": "other"})
    answers = []
    for k in range(4):
        target = ds if k % 2 == 0 else other
        answers.append((target, o.post(f"/v1/datasets/{target}/records",
                                       json=[{"value": k}] * (k + 2)).get_json()))
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        for target in (ds, other):
            stored = set(s.scalars(select(Record.id).where(Record.dataset_id == target)).all())
            listed = {i for t, a in answers if t == target
                      for lo, hi in a["record_ids"] for i in range(lo, hi + 1)}
            assert stored == listed


def test_queries_running_during_erasures_all_answer_on_a_whole_version(api: Api) -> None:
    import threading

    _, owner, analyst, ds = _setup(api)
    errors: list[Any] = []
    answers: list[int] = []

    def erase() -> None:
        client = Api(api.app, owner)
        for i in range(10):
            resp = client.delete(f"/v1/datasets/{ds}/units/old{i}")
            if resp.status_code != 200 or resp.get_json()["deleted"] != 3:
                errors.append(resp.get_json())

    def query() -> None:
        client = Api(api.app, analyst)
        for k in range(12):
            resp = client.post(f"/v1/datasets/{ds}/query", json={
                "aggregate": "count", "epsilon": 10 - k / 100,  # distinct: never a replay
                "where": [{"column": "age", "op": ">=", "value": 95}]})
            if resp.status_code != 200:
                errors.append(resp.get_json())
            else:
                answers.append(resp.get_json()["result"])

    threads = [threading.Thread(target=erase), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # each answer counts 60 - 3k visits for some whole number k of erased units (noise ±15)
    assert len(answers) == 12 and all(-15 <= a <= 75 for a in answers)
    ledger = api.as_(analyst).get(f"/v1/queries?dataset_id={ds}").get_json()
    assert {e["dataset_version"] for e in ledger} <= set(range(1, 12))
    assert api.as_(owner).get(f"/v1/datasets/{ds}").get_json()["rows"] == 230
    assert abs(_old_count(api, analyst, ds) - 30) <= 15
