"""Bounded work per request (issue 12, finding 3): body caps per route, a per-key cap on
concurrent expensive requests, and `Connection: close` when a refused body was left unread."""

from __future__ import annotations

import io
import threading
from typing import Any

import orjson
import pytest

from tests.conftest import make_app
from tests.helpers import Api, patient_rows


def _close(app: Any) -> None:
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()


def test_json_routes_take_kilobytes_and_only_uploads_take_the_upload_cap(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    api = Api(app)
    _, owner = api.user("owner", "owner")
    analyst_id, analyst = api.user("analyst", "analyst")
    _, admin = api.user("admin", "admin")
    ds = api.dataset(owner, rows=patient_rows(5))
    api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}", json={"epsilon": 5})
    rows = patient_rows(1500, start=100)
    body = orjson.dumps(rows)
    assert len(body) > 100_000
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=body,
                               content_type="application/json")
    assert resp.status_code == 201, resp.get_json()
    padded = orjson.dumps({"aggregate": "count", "epsilon": 0.1, "pad": "x" * 70_000})
    for path in (f"/v1/datasets/{ds}/query", f"/v1/datasets/{ds}/query/estimate"):
        resp = api.as_(analyst).post(path, data=padded, content_type="application/json")
        assert resp.status_code == 413
        assert resp.get_json()["code"] == "payload_too_large"
        assert resp.get_json()["details"]["limit"] == 64 * 1024
        assert resp.headers["Connection"] == "close"  # its body was never read
    # refused before authentication too: an anonymous big body is not read
    resp = api.post("/v1/users", data=b" " * 70_000, content_type="application/json")
    assert resp.status_code == 413 and resp.headers["Connection"] == "close"
    budgets = api.as_(analyst).get("/v1/budgets").get_json()
    assert budgets[0]["epsilon_spent"] == 0  # nothing charged
    _close(app)


def test_a_refused_request_whose_body_was_not_read_closes_the_connection(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    api = Api(app)
    _, analyst = api.user("analyst", "analyst")
    resp = api.as_(analyst).post("/v1/datasets/1/records", data=b"[]" * 1000,
                                 content_type="application/json")
    assert resp.status_code == 403
    assert resp.headers["Connection"] == "close"
    resp = api.as_("pa_0123456789abcdef_forged").post("/v1/datasets/1/records", data=b"[1]",
                                                      content_type="application/json")
    assert resp.status_code == 401 and resp.headers["Connection"] == "close"
    # a body the view read to the end keeps the connection
    resp = api.as_(analyst).post("/v1/datasets/1/query/estimate",
                                 json={"aggregate": "count", "epsilon": 0.1})
    assert resp.status_code == 404 and "Connection" not in resp.headers
    _close(app)


class _HeldBody(io.BytesIO):
    """A request body that stops after its first bytes until the test releases it."""

    def __init__(self, data: bytes, release: threading.Event, started: threading.Event) -> None:
        super().__init__(data)
        self.release, self.started = release, started

    def _hold(self) -> None:
        if self.tell() >= 40:
            self.started.set()
            assert self.release.wait(20)

    def read(self, size: int | None = -1, /) -> bytes:
        self._hold()
        return super().read(40 if self.tell() < 40 else size)

    def readinto(self, buffer: Any, /) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1, /) -> bytes:
        self._hold()
        return super().readline(size)


@pytest.mark.parametrize("cap", [2])
def test_one_key_may_run_only_a_few_expensive_requests_at_once(sqlite_url: str, cap: int) -> None:
    app = make_app(sqlite_url, max_concurrent_expensive=cap)
    api = Api(app)
    _, owner = api.user("owner", "owner")
    _, other = api.user("other", "owner")
    ds = api.dataset(owner, rows=patient_rows(5))
    ds_other = api.dataset(other, rows=patient_rows(5))
    csv = ("patient_id,age,sex,cost,smoker\n"
           + "".join(f"q{i},{i % 90},F,1.5,true\n" for i in range(50))).encode()
    release = threading.Event()
    results: list[int] = []

    def held_upload(started: threading.Event) -> None:
        client = app.test_client()
        resp = client.post(f"/v1/datasets/{ds}/records",
                           input_stream=_HeldBody(csv, release, started),
                           content_type="text/csv",
                           headers={"Authorization": f"Bearer {owner}"})
        results.append(resp.status_code)

    started = [threading.Event() for _ in range(cap)]
    threads = [threading.Thread(target=held_upload, args=(s,)) for s in started]
    for t in threads:
        t.start()
    try:
        assert all(s.wait(20) for s in started), "the held uploads never reached the view"
        # the same key: refused at once, in the contract's shape, nothing read
        for path, body in ((f"/v1/datasets/{ds}/records", patient_rows(1, start=900)),
                           (f"/v1/datasets/{ds}/query", {"aggregate": "count", "epsilon": 0.1}),
                           (f"/v1/datasets/{ds}/sql/estimate",
                            {"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.1})):
            resp = api.as_(owner).post(path, json=body)
            assert resp.status_code == 429, resp.get_json()
            err = resp.get_json()
            assert err["code"] == "rate_limited" and err["details"]["reason"] == "concurrency"
            assert resp.headers["Retry-After"] == "1"
        # cheap requests of the same key, and everything of another key, go on
        assert api.as_(owner).get("/v1/me").status_code == 200
        assert api.as_(other).post(f"/v1/datasets/{ds_other}/records",
                                   json=patient_rows(3, start=700)).status_code == 201
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert results == [201] * cap
    # the slots were given back
    assert api.as_(owner).post(f"/v1/datasets/{ds}/records",
                               json=patient_rows(2, start=800)).status_code == 201
    assert api.as_(owner).get(f"/v1/datasets/{ds}").get_json()["rows"] == 5 + 50 * cap + 2
    _close(app)
