"""Per-API-key rate limits: one allowance per key across all routes, 429 in the contract shape."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
import redis

from privacy_api.config import ConfigError
from tests.conftest import make_app
from tests.helpers import Api

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


def test_forged_tokens_cannot_spend_a_keys_allowance(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="3/minute")
    api = Api(app)
    _, alice = api.user("alice", "analyst")
    key_id = alice.split("_")[1]
    forged = api.as_(f"pa_{key_id}_{'x' * 43}")
    assert [forged.get("/v1/me").status_code for _ in range(3)] == [401, 401, 401]
    assert_rate_limited(forged.get("/v1/me"))
    assert api.as_(alice).get("/v1/me").status_code == 200
    _close(app)


def test_anonymous_requests_count_per_address(sqlite_url: str) -> None:
    app = make_app(sqlite_url, rate_limit="2/minute")
    api = Api(app)
    here = {"REMOTE_ADDR": "10.0.0.7"}
    assert [api.get("/v1/me", environ_base=here).status_code for _ in range(2)] == [401, 401]
    assert_rate_limited(api.get("/v1/me", environ_base=here))
    assert_rate_limited(api.as_("not-a-key").get("/v1/me", environ_base=here))
    assert api.get("/v1/me", environ_base={"REMOTE_ADDR": "10.0.0.8"}).status_code == 401
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
    with caplog.at_level(logging.WARNING, logger="privacy_api.limits"):
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
    from privacy_api.config import Settings
    from privacy_api.limits import PRODUCTION_DEFAULT, effective_limit

    prod = Settings(database_url="sqlite:///x", master_keys=(b"k",), environment="production")
    assert effective_limit(prod) == PRODUCTION_DEFAULT
    assert effective_limit(Settings(database_url="sqlite:///x", master_keys=(b"k",))) is None
    assert effective_limit(Settings(database_url="sqlite:///x", master_keys=(b"k",),
                                    environment="production", rate_limit="off")) is None
