"""Every failure answers in the contract's JSON shape: never HTML, never a stack trace."""

from __future__ import annotations

import pytest

from tests.helpers import PATIENTS_SCHEMA


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict)
    return body


def test_unknown_route_and_wrong_method(api):
    assert_error(api.get("/nope"), 404, "not_found")
    resp = assert_error(api.delete("/v1/me"), 405, "method_not_allowed")
    assert resp


def test_missing_and_bad_keys_are_unauthorized(api):
    assert_error(api.get("/v1/me"), 401, "unauthorized")
    assert_error(api.as_("pa_nothing_here").get("/v1/me"), 401, "unauthorized")
    assert_error(api.as_("garbage").get("/v1/me"), 401, "unauthorized")
    _, key = api.user("a", "admin")
    assert_error(api.as_(key[:-2] + "xx").get("/v1/me"), 401, "unauthorized")
    assert api.as_(key).get("/v1/me").status_code == 200


def test_malformed_json_and_wrong_types(api):
    _, owner = api.user("o", "owner")
    o = api.as_(owner)
    assert_error(o.post("/v1/datasets", data="{bad", content_type="application/json"),
                 400, "invalid_request")
    body = assert_error(o.post("/v1/datasets", json={"name": 3, "columns": "x"}),
                        422, "invalid_request")
    assert "name" in str(body["details"]) and "columns" in str(body["details"])
    assert_error(o.post("/v1/datasets", json=[1, 2]), 422, "invalid_request")
    bad = {**PATIENTS_SCHEMA, "surprise": True}
    assert_error(o.post("/v1/datasets", json=bad), 422, "invalid_request")


def test_too_large_body_is_413(db_url):
    from tests.conftest import make_app
    from tests.helpers import Api

    # a JSON route's cap is the JSON cap, whatever the upload cap is
    app = make_app(db_url, max_json_bytes=1000)
    api = Api(app)
    _, owner = api.user("o", "owner")
    resp = api.as_(owner).post("/v1/datasets", data="x" * 5000, content_type="application/json")
    assert_error(resp, 413, "payload_too_large")
    app.extensions["privacy_api"].db.dispose()


# 60 kB: under the 64 KiB JSON cap, so the parser (not the cap) must refuse it
@pytest.mark.parametrize("depth", [30_000])
def test_deeply_nested_json_is_refused_cleanly(api, depth):
    _, owner = api.user("o", "owner")
    resp = api.as_(owner).post("/v1/datasets", data="[" * depth + "]" * depth,
                               content_type="application/json")
    assert resp.status_code in (400, 422)
    assert resp.get_json()["code"] == "invalid_request"
    assert api.as_(owner).get("/v1/me").status_code == 200


def test_openapi_is_generated_from_the_schemas(api):
    spec = api.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/datasets/{dataset_id}/records" in spec["paths"]
    post = spec["paths"]["/v1/datasets"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = schema_ref.rsplit("/", 1)[-1]
    assert "columns" in spec["components"]["schemas"][name]["properties"]


def test_database_lost_at_the_requests_commit_is_503(api, monkeypatch):
    """The request's unit of work commits after the view: a connection lost there (as in a
    PostgreSQL restart, tests/faults) must answer 503 in the contract shape, not a 500."""
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    _, admin = api.user("root", "admin")

    def lost(self):
        raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(Session, "commit", lost)
    resp = api.as_(admin).post("/v1/users", json={"name": "bob", "role": "analyst"})
    assert resp.status_code == 503
    assert resp.get_json()["code"] == "unavailable"
    assert resp.headers["Retry-After"] == "2"
    monkeypatch.undo()
    assert api.as_(admin).get("/v1/users").status_code == 200
