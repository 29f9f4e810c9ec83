"""Hostile bodies: too large, too deep, too long, not JSON at all.

Each is refused with a 4xx in the contract's error shape, and the same process goes on
answering ordinary requests.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.conftest import make_app
from tests.helpers import Api, patient_rows

# Deep, yet under the 64 KiB JSON cap, so the JSON parser itself (not the body cap) must
# refuse it on every route.
NESTED_BYTES = 60_000


def assert_refused(resp: Any, *statuses: int) -> dict[str, Any]:
    assert resp.status_code in statuses, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    assert set(body) == {"code", "message", "details"}
    return body


@pytest.fixture
def world(api: Api) -> dict[str, Any]:
    admin_id, admin = api.user("admin", "admin")
    _, owner = api.user("owner", "owner")
    analyst_id, analyst = api.user("analyst", "analyst")
    ds = api.dataset(owner, rows=patient_rows(10))
    assert api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}", json={"epsilon": 5}).status_code == 200
    return {"api": api, "admin": admin, "owner": owner, "analyst": analyst, "ds": ds,
            "analyst_id": analyst_id}


def _json_targets(w: dict[str, Any]) -> list[tuple[str, str, str]]:
    ds = w["ds"]
    return [
        (w["owner"], "POST", "/v1/datasets"),
        (w["owner"], "POST", f"/v1/datasets/{ds}/records"),
        (w["analyst"], "POST", f"/v1/datasets/{ds}/query"),
        (w["analyst"], "POST", f"/v1/datasets/{ds}/query/estimate"),
        (w["admin"], "PUT", f"/v1/budgets/{w['analyst_id']}/{ds}"),
        (w["admin"], "POST", "/v1/users"),
        (w["owner"], "POST", "/v1/federations"),
    ]


def _still_serving(w: dict[str, Any]) -> None:
    api, ds = w["api"], w["ds"]
    assert api.as_(w["owner"]).get("/v1/me").status_code == 200
    resp = api.as_(w["analyst"]).post(f"/v1/datasets/{ds}/query/estimate",
                                      json={"aggregate": "count", "epsilon": 0.1})
    assert resp.status_code == 200, resp.get_json()


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
def test_deeply_nested_json_is_refused_everywhere(world: dict[str, Any], opener: str, closer: str) -> None:
    depth = NESTED_BYTES // (len(opener) + len(closer))
    body = opener * depth + "1" + closer * depth
    for key, method, path in _json_targets(world):
        resp = world["api"].as_(key).request(method, path, data=body, content_type="application/json")
        assert_refused(resp, 400, 422)
    _still_serving(world)


def test_huge_arrays_are_refused_without_echoing_them(world: dict[str, Any]) -> None:
    api, ds = world["api"], world["ds"]
    big = [0] * 500_000
    checks = [
        (world["owner"], "POST", "/v1/datasets", {"name": "x", "columns": big}),
        (world["owner"], "POST", f"/v1/datasets/{ds}/records", big),
        (world["analyst"], "POST", f"/v1/datasets/{ds}/query",
         {"aggregate": "count", "epsilon": 0.1, "where": [{"column": "sex", "op": "in", "value": big}]}),
        (world["analyst"], "POST", f"/v1/datasets/{ds}/query",
         {"aggregate": "count", "epsilon": 0.1, "group_by": ["sex"] * 100_000}),
    ]
    for key, method, path, payload in checks:
        resp = api.as_(key).request(method, path, json=payload)
        # JSON routes: over their 64 KiB cap (413); the upload route: invalid rows (422)
        assert_refused(resp, 422 if path.endswith("/records") else 413)
        assert len(resp.get_data()) < 100_000, "an error must not echo the whole input back"
    _still_serving(world)


@pytest.mark.parametrize("raw", [
    b'{"aggregate": "count", "epsilon": 1' + b"0" * 5000 + b"}",  # beyond int digit limits
    b'{"aggregate": "count", "epsilon": NaN}',
    b'{"aggregate": "count", "epsilon": 1e999}',
    b'{"aggregate": "count", "epsilon": 0.1, "column": "\xff\xfe"}',
    b'{"aggregate": "count", "epsilon": 0.1, "column": "a\\u0000b"}',
    b'{"aggregate": "count", "epsilon": 0.1, "column": "\\ud800"}',
    b'{"aggregate": "count", "aggregate": "sum", "epsilon": 0.1}',
    b"\x00\x01\x02",
    b"",
], ids=["huge-int", "nan", "inf", "bad-utf8", "nul", "lone-surrogate", "dup-key", "binary", "empty"])
def test_odd_json_is_refused_or_answered_cleanly(world: dict[str, Any], raw: bytes) -> None:
    api, ds = world["api"], world["ds"]
    resp = api.as_(world["analyst"]).post(f"/v1/datasets/{ds}/query/estimate", data=raw,
                                          content_type="application/json")
    if resp.status_code != 200:  # a duplicate key is legal JSON; the last one wins
        assert_refused(resp, 400, 422)
    _still_serving(world)


def test_oversized_bodies_are_413_on_every_kind_of_upload(sqlite_url: str) -> None:
    app = make_app(sqlite_url, max_content_length=4096, max_json_bytes=4096,
                   max_update_bytes=4096)
    api = Api(app)
    _, owner = api.user("owner", "owner")
    _, analyst = api.user("analyst", "analyst")
    _, client = api.user("client", "client")
    ds = api.dataset(owner, rows=patient_rows(5))
    big_rows = patient_rows(200)
    csv = "patient_id,age,sex,cost,smoker\n" + "p,1,F,1.0,true\n" * 1000
    o = api.as_(owner)
    cases = [
        o.post("/v1/datasets", json={"name": "x" * 10_000, "columns": []}),
        o.post(f"/v1/datasets/{ds}/records", json=big_rows),
        o.post(f"/v1/datasets/{ds}/records", data=csv, content_type="text/csv"),
        o.post(f"/v1/datasets/{ds}/records", data=csv.replace(",", "\t"),
               content_type="application/x-ndjson"),
        # streamed without a Content-Length: the limit still holds while reading
        o.post(f"/v1/datasets/{ds}/records", input_stream=io.BytesIO(csv.encode()),
               content_type="text/csv", headers={"Transfer-Encoding": "chunked"},
               environ_base={"wsgi.input_terminated": True}),
        api.as_(analyst).post(f"/v1/datasets/{ds}/query",
                              json={"aggregate": "count", "epsilon": 0.1, "pad": "x" * 10_000}),
        api.as_(client).post("/v1/rounds/1/updates", data=b"\0" * 10_000,
                             content_type="application/octet-stream"),
    ]
    for resp in cases:
        body = assert_refused(resp, 413)
        assert body["code"] == "payload_too_large"
    assert o.get(f"/v1/datasets/{ds}").get_json()["rows"] == 5  # nothing half-written
    assert o.post(f"/v1/datasets/{ds}/records", json=patient_rows(2, start=50)).status_code == 201
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()
