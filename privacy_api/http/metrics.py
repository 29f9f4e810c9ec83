"""Prometheus metrics at ``GET /metrics``: counts and timings, never a data value.

Labels are drawn from small fixed sets (route rule, method, status, aggregate, mechanism,
outcome) or are identifiers (dataset id). Nothing derived from a record, an answer, a request
body, a key or a token is ever a label or a sample.

Under gunicorn set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory, the same for every
worker and emptied before the server starts: each worker then writes its samples there and
``/metrics`` sums them, whichever worker answers the scrape. Only counters and histograms are
used, so no hook is needed when a worker exits (its counts stay in the totals, as they should).

Access to ``/metrics`` is opt-in: it exists only when ``PRIVACY_API_METRICS_TOKEN`` is set
(otherwise 404, for everyone), and then only for ``Authorization: Bearer <token>``, compared in
constant time. No API key, loopback address or forwarding header opens it: a reverse proxy on
the same host makes every request look local, and an admin key is a far bigger secret to hand a
scraper. An authorised scrape is exempt from rate limits; every other request to ``/metrics``
counts against its caller's allowance like any request.

The federated service reports through :func:`federated_update` and :func:`federated_round`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from decimal import Decimal
from typing import Any

from apiflask import APIFlask
from flask import Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from .error_responses import error_body

METRICS_TOKEN_ENV = "PRIVACY_API_METRICS_TOKEN"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_AGGREGATES = frozenset({"count", "sum", "mean", "variance", "std", "histogram", "quantile"})
_MECHANISMS = frozenset({"laplace", "gaussian"})
UPDATE_REFUSAL_REASONS = frozenset({
    "duplicate", "malformed", "wrong_length", "wrong_context", "too_large", "round_not_open",
    "not_enrolled", "other",
})
ROUND_STATUSES = frozenset({"opened", "aggregated", "failed"})

REQUEST_SECONDS = Histogram(
    "privacy_api_http_request_duration_seconds",
    "Time to answer an HTTP request, by route rule (never the raw path), method and status.",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUERIES_ANSWERED = Counter(
    "privacy_api_queries_answered_total",
    "DP queries answered (fresh or replayed), by aggregate and mechanism.",
    ["aggregate", "mechanism"],
)
QUERY_REPLAYS = Counter(
    "privacy_api_query_replays_total",
    "Repeated queries answered from the stored answer, charging nothing.",
    ["aggregate", "mechanism"],
)
BUDGET_EXHAUSTED = Counter(
    "privacy_api_budget_exhausted_total",
    "Queries refused because the budget could not pay for them (nothing was charged).",
    ["dataset_id"],
)
EPSILON_SPENT = Counter(
    "privacy_api_epsilon_spent_total",
    "Epsilon charged to analysts' budgets by answered queries (replays charge 0).",
    ["dataset_id"],
)
FEDERATED_UPDATES = Counter(
    "privacy_api_federated_updates_total",
    "Encrypted model updates received, by outcome (accepted|refused) and refusal reason.",
    ["outcome", "reason"],
)
FEDERATED_ROUNDS = Counter(
    "privacy_api_federated_rounds_total",
    "Federated rounds by status transition: opened, aggregated, failed.",
    ["status"],
)
RATE_LIMITED = Counter(
    "privacy_api_rate_limited_total",
    "Requests refused with 429 by the per-key rate limit.",
)


def _label(value: Any, allowed: frozenset[str], default: str = "other") -> str:
    # Labels come from fixed sets, so nothing a caller sends can create a new time series.
    text = str(value) if value is not None else ""
    return text if text in allowed else default


def _id_label(value: Any) -> str:
    return str(value) if isinstance(value, int) and value > 0 else "unknown"


# --- helpers services call ---------------------------------------------------------------


def query_answered(aggregate: str, mechanism: str, *, replayed: bool, dataset_id: int,
                   epsilon_charged: float | Decimal) -> None:
    """Count one answered query and the epsilon it charged (0 for a replay)."""
    agg, mech = _label(aggregate, _AGGREGATES), _label(mechanism, _MECHANISMS)
    QUERIES_ANSWERED.labels(agg, mech).inc()
    if replayed:
        QUERY_REPLAYS.labels(agg, mech).inc()
    eps = float(epsilon_charged)
    if eps > 0:
        EPSILON_SPENT.labels(_id_label(dataset_id)).inc(eps)


def budget_exhausted(dataset_id: int | None) -> None:
    """Count one query refused for lack of budget."""
    BUDGET_EXHAUSTED.labels(_id_label(dataset_id)).inc()


def federated_update(*, accepted: bool, reason: str | None = None) -> None:
    """Count one received model update.

    `reason` (refusals only) is one of UPDATE_REFUSAL_REASONS; anything else counts as "other".
    """
    if accepted:
        FEDERATED_UPDATES.labels("accepted", "").inc()
    else:
        FEDERATED_UPDATES.labels("refused", _label(reason, UPDATE_REFUSAL_REASONS)).inc()


def federated_round(status: str) -> None:
    """Count a round reaching `status`: "opened", "aggregated" or "failed"."""
    FEDERATED_ROUNDS.labels(_label(status, ROUND_STATUSES)).inc()


def rate_limited() -> None:
    RATE_LIMITED.inc()


# --- Flask wiring ------------------------------------------------------------------------


def route_label() -> str:
    """The matched route rule (``/v1/datasets/<int:dataset_id>``), never the raw path."""
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _observe_query_outcome(response: Response) -> None:
    # The query contract (API.md) carries everything these counters need, so the query
    # service stays free of instrumentation: aggregate/mechanism are public parameters from
    # the validated request, replayed/epsilon_spent come from the response.
    if request.endpoint != "queries.query" or response.status_code not in (200, 403):
        return
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return
    dataset_id = (request.view_args or {}).get("dataset_id")
    if response.status_code == 403:
        if body.get("code") == "budget_exhausted":
            budget_exhausted(dataset_id)
        return
    spec = request.get_json(silent=True)
    spec = spec if isinstance(spec, dict) else {}
    eps = body.get("epsilon_spent")
    query_answered(spec.get("aggregate", ""), spec.get("mechanism") or "laplace",
                   replayed=body.get("replayed") is True,
                   dataset_id=dataset_id if isinstance(dataset_id, int) else 0,
                   epsilon_charged=eps if isinstance(eps, int | float) else 0)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _digest(text: str) -> bytes:
    # Compare digests: equal lengths, so compare_digest's time does not even reveal the length.
    return hashlib.sha256(text.encode()).digest()


def scrape_authorised() -> bool:
    """True when this request carries the configured metrics token (constant-time compare)."""
    token: str = current_app.config.get("METRICS_TOKEN") or ""
    if not token:
        return False
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(_digest(presented.strip()),
                                                              _digest(token))


def _scrape_allowed() -> Response | None:
    """None when the caller may read /metrics, else the error response."""
    if not current_app.config.get("METRICS_TOKEN"):
        return error_body(404, "not_found", "metrics are off (set PRIVACY_API_METRICS_TOKEN)")
    if not scrape_authorised():
        return error_body(401, "unauthorized", "metrics need the metrics bearer token")
    return None


def init_metrics(app: APIFlask) -> None:
    """Time every request and serve /metrics. Call before other before_request hooks."""
    app.config.setdefault("METRICS_TOKEN", os.environ.get(METRICS_TOKEN_ENV) or None)

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            method = _label(request.method, HTTP_METHODS)
            REQUEST_SECONDS.labels(route_label(), method, str(response.status_code)).observe(
                time.perf_counter() - started)
        _observe_query_outcome(response)
        return response

    # Not an API operation: hidden from /openapi.json.
    @app.get("/metrics", endpoint="metrics")
    @app.doc(hide=True)
    def metrics_view() -> Response:
        refused = _scrape_allowed()
        if refused is not None:
            return refused
        return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
