"""Per-API-key rate limits: one allowance per key across all routes, 429 in the contract shape."""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import pytest
import redis

from privacy_api.runtime.config import ConfigError
from tests.conftest import make_app
from tests.helpers import PATIENTS_SCHEMA, Api

# CI exports it; the default is the local server, database 15 (flushed by the tests).
REDIS_URL = os.environ.get("PRIVACY_API_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _close(*apps: Any) -> None:
    for app in apps:
        app.extensions["privacy_api"].cache.close()
        app.extensions["privacy_api"].db.dispose()


def assert_rate_limited(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 429, resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == "rate_limited"
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    assert body["details"]["retry_after"] == retry_after
    return body


def test_each_key_has_one_allowance_across_routes(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="3/minute")
    api = Api(app)
    _, alice = api.user("alice", "analyst")
    _, bob = api.user("bob", "analyst")
    a = api.as_(alice)
    assert [a.get("/v1/me").status_code, a.get("/v1/datasets").status_code,
            a.get("/v1/budgets").status_code] == [200, 200, 200]
    body = assert_rate_limited(a.get("/v1/queries"))
    assert "3 per 1 minute" in body["details"]["limit"]
    # Another key is untouched; so is a scrape with the metrics token.
    assert api.as_(bob).get("/v1/me").status_code == 200
    app.config["METRICS_TOKEN"] = "scrape"
    assert api.as_("scrape").get("/metrics").status_code == 200
    _close(app)


def test_forged_tokens_count_as_anonymous(sqlite_url: str) -> None:
    """A well-formed but forged key naming alice's key id neither spends her allowance nor
    escapes the small per-address bucket (before: each forged token had a bucket of its own)."""
    app = make_app(sqlite_url, rate_limit="50/minute", anon_rate_limit="3/minute")
    api = Api(app)
    _, alice = api.user("alice", "analyst")
    key_id = alice.split("_")[1]
    here = {"REMOTE_ADDR": "10.0.0.9"}
    forged = [api.as_(f"pa_{key_id}_{c * 43}") for c in "xyz"]
    assert [f.get("/v1/me", environ_base=here).status_code for f in forged] == [401] * 3
    assert_rate_limited(api.as_(f"pa_{key_id}_{'w' * 43}").get("/v1/me", environ_base=here))
    assert_rate_limited(api.get("/v1/me", environ_base=here))  # the same bucket as no key
    assert api.as_(alice).get("/v1/me", environ_base=here).status_code == 200
    _close(app)


def test_anonymous_requests_count_per_address(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="50/minute", anon_rate_limit="2/minute")
    api = Api(app)
    here = {"REMOTE_ADDR": "10.0.0.7"}
    assert [api.get("/v1/me", environ_base=here).status_code for _ in range(2)] == [401, 401]
    assert_rate_limited(api.get("/v1/me", environ_base=here))
    assert_rate_limited(api.as_("not-a-key").get("/v1/me", environ_base=here))
    assert api.get("/v1/me", environ_base={"REMOTE_ADDR": "10.0.0.8"}).status_code == 401
    _close(app)


def _sign_in(api: Api, key: str, here: dict[str, str]) -> None:
    page = api.get("/admin/signin", environ_base=here).get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    resp = api.post("/admin/signin", data={"api_key": key, "csrf_token": token}, environ_base=here)
    assert resp.status_code == 303, resp.get_data(as_text=True)[:300]


def test_a_signed_in_admin_is_not_limited_by_anonymous_traffic_from_the_same_address(
        sqlite_url: str) -> None:
    """Finding 2: after 620 anonymous requests from one address a signed-in admin got 429."""
    app = make_app(sqlite_url, rate_limit="600/minute")
    api = Api(app)
    _, admin = api.user("root", "admin")
    here = {"REMOTE_ADDR": "10.1.1.1"}
    dash = Api(app)  # its own test client: its own cookie jar
    _sign_in(dash, admin, here)
    statuses = Counter(api.get("/v1/me", environ_base=here).status_code for _ in range(620))
    assert statuses[429] >= 620 - 60 and statuses[401] <= 60
    assert all(dash.get("/admin/", environ_base=here).status_code == 200 for _ in range(20))
    assert api.as_(admin).get("/v1/me", environ_base=here).status_code == 200
    _close(app)


def test_sign_in_posts_have_their_own_small_bucket(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="600/minute", signin_rate_limit="3/minute")
    api = Api(app)
    here = {"REMOTE_ADDR": "10.2.2.2"}
    page = api.get("/admin/signin", environ_base=here).get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    tries = [api.post("/admin/signin", data={"api_key": f"pa_{i:016x}_guess", "csrf_token": token},
                      environ_base=here).status_code for i in range(4)]
    assert tries[:3] == [401, 401, 401] and tries[3] == 429
    # other anonymous paths from that address are not yet limited
    assert api.get("/v1/me", environ_base=here).status_code == 401
    _close(app)


@pytest.mark.parametrize("trusted", [0, 1])
def test_forwarded_for_is_believed_only_from_trusted_proxies(sqlite_url: str, trusted: int) -> None:
    app = make_app(sqlite_url, rate_limit="600/minute", anon_rate_limit="2/minute",
                   trusted_proxies=trusted)
    api = Api(app)
    proxy = {"REMOTE_ADDR": "10.9.9.9"}

    def via_proxy(client_addr: str, spoofed: str | None = None) -> int:
        chain = f"{spoofed}, {client_addr}" if spoofed else client_addr
        return int(api.get("/v1/me", environ_base=proxy,
                           headers={"X-Forwarded-For": chain}).status_code)

    first = [via_proxy("203.0.113.1") for _ in range(2)]
    other_client = via_proxy("203.0.113.2")
    # a client prepending its own addresses cannot pick a fresh bucket
    spoofed = via_proxy("203.0.113.1", spoofed="198.51.100.77")
    assert first == [401, 401]
    if trusted:
        assert (other_client, spoofed) == (401, 429)
    else:  # nothing forwarded is believed: everyone is the proxy
        assert (other_client, spoofed) == (429, 429)
    _close(app)


def test_estimates_spend_the_same_allowance_as_queries(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="3/minute")
    api = Api(app)
    _, owner = api.user("own", "owner")
    _, analyst = api.user("ana", "analyst")
    ds = api.as_(owner).post("/v1/datasets", json=PATIENTS_SCHEMA).get_json()["id"]
    spec = {"aggregate": "count", "epsilon": 0.1}
    a = api.as_(analyst)
    assert [a.post(f"/v1/datasets/{ds}/query/estimate", json=spec).status_code
            for _ in range(3)] == [404] * 3  # no budget yet: refused, but counted
    assert_rate_limited(a.post(f"/v1/datasets/{ds}/query", json=spec))
    _close(app)


@pytest.mark.xdist_group("servers")  # one test at a time flushes the shared Redis database
def test_two_app_instances_share_the_count_on_redis(sqlite_url: str) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    try:
        store.ping()
    except redis.RedisError as exc:
        pytest.skip(reason=f"Redis at {REDIS_URL} is not reachable: {type(exc).__name__}")
    store.flushdb()
    try:
        first = make_app(sqlite_url, rate_limit="4/minute", redis_url=REDIS_URL)
        second = make_app(sqlite_url, rate_limit="4/minute", redis_url=REDIS_URL)
        _, key = Api(first).user("carol", "analyst")
        one, two = Api(first).as_(key), Api(second).as_(key)
        assert [one.get("/v1/me").status_code, two.get("/v1/me").status_code,
                one.get("/v1/me").status_code, two.get("/v1/me").status_code] == [200] * 4
        assert_rate_limited(one.get("/v1/me"))
        assert_rate_limited(two.get("/v1/me"))
        _close(first, second)
    finally:
        store.flushdb()
        store.close()


def test_memory_storage_says_it_is_per_process(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="privacy_api.http.limits"):
        app = make_app(sqlite_url, rate_limit="100/minute")
    assert any("separately in each process" in r.getMessage() for r in caplog.records)
    _close(app)


def test_no_limit_in_development_unless_set(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    api = Api(app)
    _, key = api.user("dave", "analyst")
    assert all(api.as_(key).get("/v1/me").status_code == 200 for _ in range(30))
    _close(app)


@pytest.mark.parametrize("value", ["lots", "10/fortnight", "-1/minute"])
def test_a_malformed_limit_fails_at_start(sqlite_url: str, value: str) -> None:
    with pytest.raises(ConfigError, match="PRIVACY_API_RATE_LIMIT"):
        make_app(sqlite_url, rate_limit=value)


def test_production_has_a_default_limit() -> None:
    from privacy_api.http.limits import PRODUCTION_DEFAULT, effective_limit
    from privacy_api.runtime.config import Settings

    prod = Settings(database_url="sqlite:///x", master_keys=(b"k",), environment="production")
    assert effective_limit(prod) == PRODUCTION_DEFAULT
    assert effective_limit(Settings(database_url="sqlite:///x", master_keys=(b"k",))) is None
    assert effective_limit(Settings(database_url="sqlite:///x", master_keys=(b"k",),
                                    environment="production", rate_limit="off")) is None
