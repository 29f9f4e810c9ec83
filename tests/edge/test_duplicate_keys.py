"""A JSON body naming a key twice is refused (422 naming the key), never read last-wins."""

from __future__ import annotations

from typing import Any

from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows

JSON = "application/json"


def _world(api: Api) -> tuple[str, str, int, int]:
    _, admin = api.user("admin", "admin")
    _, owner = api.user("owner", "owner")
    analyst_id, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(40))
    assert api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}",
                              json={"epsilon": 1.0}).status_code == 200
    return admin, analyst, analyst_id, ds


def _refused(resp: Any, key: str) -> None:
    assert resp.status_code == 422, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == "invalid_request" and body["details"]["duplicate_key"] == key
    assert repr(key) in body["message"]


def test_duplicate_epsilon_is_refused_and_nothing_is_charged(api: Api) -> None:
    admin, analyst, analyst_id, ds = _world(api)
    a = api.as_(analyst)
    raw = '{"aggregate": "count", "epsilon": 0.01, "epsilon": 5}'
    _refused(a.post(f"/v1/datasets/{ds}/query", data=raw, content_type=JSON), "epsilon")
    _refused(a.post(f"/v1/datasets/{ds}/query/estimate", data=raw, content_type=JSON), "epsilon")
    sql = '{"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.01, "epsilon": 0.9}'
    _refused(a.post(f"/v1/datasets/{ds}/sql", data=sql, content_type=JSON), "epsilon")
    budget = api.as_(admin).get(f"/v1/budgets?user_id={analyst_id}").get_json()[0]
    assert budget["epsilon_spent"] == 0 and budget["queries"] == 0
    assert a.get("/v1/queries").get_json() == []
    # The same body without the duplicate works.
    ok = a.post(f"/v1/datasets/{ds}/query", json={"aggregate": "count", "epsilon": 0.01})
    assert ok.status_code == 200 and ok.get_json()["epsilon_spent"] == 0.01


def test_duplicates_at_any_depth_and_on_every_body(api: Api) -> None:
    admin, analyst, analyst_id, ds = _world(api)
    where = ('{"aggregate": "count", "epsilon": 0.1, "where": '
             '[{"column": "age", "op": ">=", "value": 1, "value": 99}]}')
    _refused(api.as_(analyst).post(f"/v1/datasets/{ds}/query", data=where, content_type=JSON),
             "value")
    _refused(api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}",
                                data='{"epsilon": 0.5, "epsilon": 50}', content_type=JSON), "epsilon")
    assert api.as_(admin).get(f"/v1/budgets?user_id={analyst_id}").get_json()[0]["epsilon_total"] == 1.0
    _refused(api.as_(admin).post("/v1/users", data='{"name": "x", "role": "analyst", "role": "admin"}',
                                 content_type=JSON), "role")
    assert [u["name"] for u in api.as_(admin).get("/v1/users").get_json()].count("x") == 0
    column = ('{"name": "d", "columns": [{"name": "age", "type": "int", "lower": 0, '
              '"upper": 10, "upper": 1000000}], "privacy_unit": null}')
    _, owner = api.user("owner2", "owner")
    _refused(api.as_(owner).post("/v1/datasets", data=column, content_type=JSON), "upper")


def test_malformed_and_ordinary_bodies_behave_as_before(api: Api) -> None:
    _, owner = api.user("o", "owner")
    o = api.as_(owner)
    bad = o.post("/v1/datasets", data="{bad", content_type=JSON)
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_request"
    assert o.post("/v1/datasets", data="", content_type=JSON).status_code == 422
    # deep, yet under the 64 KiB JSON body cap (a bigger body is a 413 before it is parsed)
    deep = o.post("/v1/datasets", data="[" * 30_000 + "]" * 30_000, content_type=JSON)
    assert deep.status_code == 400
    huge_int = o.post("/v1/datasets", data='{"name": ' + "9" * 5000 + "}", content_type=JSON)
    assert huge_int.status_code == 400
    # Same key in two different objects is fine.
    assert o.post("/v1/datasets", json=PATIENTS_SCHEMA).status_code == 201
