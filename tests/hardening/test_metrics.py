"""GET /metrics: what it counts, who may read it, and that it never carries a data value."""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from privacy_api.http import metrics
from privacy_api.services.users import create_user
from privacy_api.storage.db import Database
from tests.hardening.test_rate_limits import REDIS_URL
from tests.helpers import Api, patient_rows
from tests.server import gunicorn

CANARY = "canary-5b1d0c"
QUERY_ROUTE = "/v1/datasets/<int:dataset_id>/query"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _world(api: Api, epsilon: float) -> tuple[str, str, int]:
    _, admin = api.user("admin", "admin")
    _, owner = api.user("owner", "owner")
    analyst_id, analyst = api.user("analyst", "analyst")
    rows = patient_rows(30)
    rows[0]["patient_id"] = CANARY
    ds = api.dataset(owner, rows=rows)
    grant = api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}", json={"epsilon": epsilon})
    assert grant.status_code == 200, grant.get_json()
    return admin, analyst, ds


def test_queries_replays_refusals_and_epsilon_are_counted(api: Api) -> None:
    admin, analyst, ds = _world(api, epsilon=1.0)
    a = api.as_(analyst)
    names = {
        "count": ("privacy_api_queries_answered_total", {"aggregate": "count", "mechanism": "laplace"}),
        "mean": ("privacy_api_queries_answered_total", {"aggregate": "mean", "mechanism": "laplace"}),
        "replays": ("privacy_api_query_replays_total", {"aggregate": "count", "mechanism": "laplace"}),
        "eps": ("privacy_api_epsilon_spent_total", {"dataset_id": str(ds)}),
        "refused": ("privacy_api_budget_exhausted_total", {"dataset_id": str(ds)}),
        "latency": ("privacy_api_http_request_duration_seconds_count",
                    {"endpoint": QUERY_ROUTE, "method": "POST", "status": "200"}),
    }
    before = {k: sample(n, **lab) for k, (n, lab) in names.items()}

    spent = 0.0
    for spec in ({"aggregate": "count", "epsilon": 0.4}, {"aggregate": "count", "epsilon": 0.4},
                 {"aggregate": "mean", "column": "age", "epsilon": 0.5}):
        resp = a.post(f"/v1/datasets/{ds}/query", json=spec)
        assert resp.status_code == 200, resp.get_json()
        spent += resp.get_json()["epsilon_spent"]
    refused = a.post(f"/v1/datasets/{ds}/query", json={"aggregate": "count", "epsilon": 0.5})
    assert refused.get_json()["code"] == "budget_exhausted"

    after = {k: sample(n, **lab) for k, (n, lab) in names.items()}
    delta = {k: after[k] - before[k] for k in names}
    assert delta["count"] == 2 and delta["replays"] == 1 and delta["mean"] == 1
    assert delta["eps"] == pytest.approx(spent) and spent == pytest.approx(0.9)
    assert delta["refused"] == 1
    assert delta["latency"] == 3

    api.app.config["METRICS_TOKEN"] = "scrape"
    text = api.as_("scrape").get("/metrics").get_data(as_text=True)
    assert f'endpoint="{QUERY_ROUTE}"' in text
    assert f"/v1/datasets/{ds}/query" not in text  # the route rule, never the raw path
    assert CANARY not in text and "patients" not in text


def test_label_values_come_from_fixed_sets() -> None:
    before = sample("privacy_api_federated_updates_total", outcome="refused", reason="other")
    metrics.federated_update(accepted=False, reason="weird\nlabel {injection}")
    metrics.federated_update(accepted=False, reason="duplicate")
    metrics.federated_update(accepted=True)
    metrics.federated_round("aggregated")
    metrics.federated_round("something else")
    assert sample("privacy_api_federated_updates_total", outcome="refused", reason="other") == before + 1
    assert sample("privacy_api_federated_updates_total", outcome="refused", reason="duplicate") >= 1
    assert sample("privacy_api_federated_updates_total", outcome="accepted", reason="") >= 1
    assert sample("privacy_api_federated_rounds_total", status="aggregated") >= 1
    assert sample("privacy_api_federated_rounds_total", status="something else") == 0


SCRAPE_TOKEN = "s3cret-scrape-token"


def test_metrics_are_off_unless_a_token_is_configured(api: Api) -> None:
    _, admin = api.user("admin", "admin")
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    for who in (api, api.as_(admin)):  # neither loopback nor an admin key opens it
        resp = who.get("/metrics")
        assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"
        assert who.get("/metrics", environ_base=remote).status_code == 404


def test_only_the_metrics_token_may_scrape(api: Api) -> None:
    _, admin = api.user("admin", "admin")
    _, analyst = api.user("analyst", "analyst")
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    api.app.config["METRICS_TOKEN"] = SCRAPE_TOKEN
    ok = api.as_(SCRAPE_TOKEN).get("/metrics", environ_base=remote)
    assert ok.status_code == 200 and "privacy_api_http_request_duration_seconds" in ok.get_data(
        as_text=True)
    for key in (None, admin, analyst, "wrong-token", SCRAPE_TOKEN[:-1], SCRAPE_TOKEN + "x", ""):
        for env in ({}, remote):
            resp = api.as_(key).get("/metrics", environ_base=env)
            assert resp.status_code == 401 and resp.get_json()["code"] == "unauthorized", key
    basic = api.get("/metrics", headers={"Authorization": f"Basic {SCRAPE_TOKEN}"})
    assert basic.status_code == 401


def test_guessing_the_metrics_token_is_rate_limited(sqlite_url: str) -> None:
    from tests.conftest import make_app

    # guesses carry no real key, so they count in the per-address anonymous bucket
    app = make_app(sqlite_url, rate_limit="5/minute", anon_rate_limit="5/minute")
    app.config["METRICS_TOKEN"] = SCRAPE_TOKEN
    api = Api(app)
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    statuses = [api.as_(f"guess-{i}").get("/metrics", environ_base=remote).status_code
                for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    # The real token is never limited: a scraper is not locked out by the guesser.
    for _ in range(10):
        assert api.as_(SCRAPE_TOKEN).get("/metrics", environ_base=remote).status_code == 200
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()


def test_metrics_is_not_an_api_operation(api: Api) -> None:
    assert "/metrics" not in api.get("/openapi.json").get_json()["paths"]


@pytest.mark.slow
@pytest.mark.xdist_group("servers")
def test_gunicorn_workers_share_metrics_and_the_redis_rate_limit(
        sqlite_template: Path, tmp_path: Path) -> None:
    """2 workers: scrapes sum every worker's samples; the Redis limit holds across workers."""
    url = REDIS_URL
    store = redis.Redis.from_url(url)
    try:
        store.ping()
    except redis.RedisError as exc:
        pytest.skip(reason=f"Redis at {url} is not reachable: {type(exc).__name__}")
    store.flushdb()
    db = tmp_path / "db.sqlite3"
    shutil.copy(sqlite_template, db)
    database = Database(f"sqlite:///{db}")
    with database.transaction() as session:  # a key, so readiness probes count elsewhere
        _, key = create_user(session, "scraper", "analyst")
    database.dispose()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom_dir), "PRIVACY_API_RATE_LIMIT": "25/minute",
           "PRIVACY_API_REDIS_URL": url, "PRIVACY_API_METRICS_TOKEN": "scrape"}
    try:
        with gunicorn(f"sqlite:///{db}", workers=2, threads=4, env=env) as server, \
                httpx.Client(base_url=server.url, timeout=10) as http:

            def hit(_: int) -> int:
                return http.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(hit, range(30)))
            assert statuses.count(200) == 25 and statuses.count(429) == 5

            for _ in range(4):  # whichever worker answers, the totals are the same
                text = http.get("/metrics", headers={"Authorization": "Bearer scrape"}).text
                assert _value(text, "/v1/me", "200") == 25
                assert _value(text, "/v1/me", "429") == 5
    finally:
        store.flushdb()
        store.close()


def _value(text: str, endpoint: str, status: str) -> float:
    prefix = "privacy_api_http_request_duration_seconds_count{"
    for line in text.splitlines():
        if line.startswith(prefix) and f'endpoint="{endpoint}"' in line and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
