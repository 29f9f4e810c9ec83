"""Structured logs: one JSON line per request, and never a value, a body, a key or a token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from privacy_api.app.logging_setup import JsonFormatter
from tests.dashboard.conftest import Dash
from tests.helpers import Api, patient_rows

CANARY_ID = "canary-id-8f2c41"
CANARY_BAD = "canary-bad-value-77e1"
CANARY_COST = "4321.98765"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything every logger emits at INFO and up (DEBUG for ours), as the service renders it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root, ours = logging.getLogger(), logging.getLogger("privacy_api")
    saved = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


def _records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_logs_hold_no_values_keys_or_bodies(api: Api, log_lines: io.StringIO) -> None:
    admin_id, admin = api.user("admin", "admin")
    _, owner = api.user("owner", "owner")
    analyst_id, analyst = api.user("analyst", "analyst")
    rows = patient_rows(20)
    rows[0]["patient_id"] = CANARY_ID
    rows[1]["cost"] = float(CANARY_COST)
    ds = api.dataset(owner, rows=rows)
    csv = f"patient_id,age,sex,cost,smoker\n{CANARY_ID}-2,40,F,{CANARY_COST},true\n"
    assert api.as_(owner).post(f"/v1/datasets/{ds}/records", data=csv,
                               content_type="text/csv").status_code == 201
    bad = api.as_(owner).post(f"/v1/datasets/{ds}/records",
                              json=[{**rows[2], "patient_id": "x", "sex": CANARY_BAD}])
    assert bad.status_code == 422
    assert api.as_(admin).put(f"/v1/budgets/{analyst_id}/{ds}", json={"epsilon": 5}).status_code == 200
    a = api.as_(analyst)
    for spec in ({"aggregate": "count", "epsilon": 0.5},
                 {"aggregate": "mean", "column": "cost", "epsilon": 0.5},
                 {"aggregate": "histogram", "column": "sex", "epsilon": 0.5, "where": [
                     {"column": "cost", "op": ">", "value": 100}]}):
        assert a.post(f"/v1/datasets/{ds}/query", json=spec).status_code == 200
    # a key in a form body (dashboard sign-in), and keys that fail
    dash = Dash(api.app)
    assert dash.sign_in(admin).status_code == 303
    assert api.as_(admin[:-3] + "xyz").get("/v1/me").status_code == 401
    assert api.as_(f"Bearer {CANARY_BAD}").get("/v1/me").status_code == 401

    text = log_lines.getvalue()
    for secret in (CANARY_ID, CANARY_BAD, CANARY_COST, admin, owner, analyst,
                   # the secret part: keys are pa_<id>_<secret>, and the secret may contain "_"
                   admin.split("_", 2)[2], owner.split("_", 2)[2], analyst.split("_", 2)[2]):
        assert secret not in text, f"{secret!r} leaked into the logs"

    access = [r for r in _records(log_lines) if r["logger"] == "privacy_api.access"]
    uploads = [r for r in access if r["route"] == "/v1/datasets/<int:dataset_id>/records"]
    assert [r["status"] for r in uploads] == [201, 201, 422]
    assert {r["role"] for r in uploads} == {"owner"}
    queries = [r for r in access if r["route"] == "/v1/datasets/<int:dataset_id>/query"]
    assert len(queries) == 3 and {r["user_id"] for r in queries} == {analyst_id}
    signin = [r for r in access if r["route"] == "/admin/signin" and r["method"] == "POST"]
    assert signin and signin[0]["status"] == 303
    admin_pages = [r for r in access if r["route"] == "/admin" and r["status"] == 200]
    assert admin_pages and admin_pages[0]["user_id"] == admin_id
    for r in access:
        assert set(r) >= {"ts", "level", "request_id", "method", "route", "status", "duration_ms",
                          "user_id", "role"}
        assert len(r["request_id"]) >= 8 and r["duration_ms"] >= 0


def test_request_ids_are_echoed_and_only_well_formed_ones_are_trusted(
        api: Api, log_lines: io.StringIO) -> None:
    good = api.get("/v1/me", headers={"X-Request-ID": "trace-0001-abcd"})
    assert good.headers["X-Request-ID"] == "trace-0001-abcd"
    hostile = api.get("/v1/me", headers={"X-Request-ID": f'{CANARY_BAD} {{"level": "ERROR"}}'})
    assert hostile.headers["X-Request-ID"] != "" and CANARY_BAD not in hostile.headers["X-Request-ID"]
    ids = [r["request_id"] for r in _records(log_lines) if r["logger"] == "privacy_api.access"]
    assert ids == ["trace-0001-abcd", hostile.headers["X-Request-ID"]]
    assert CANARY_BAD not in log_lines.getvalue()


def test_errors_are_logged_by_type_and_frames_without_their_message() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.hardening.formatter")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            float(CANARY_BAD)
        except ValueError:
            log.exception("unhandled error: %s", "ValueError")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    record = json.loads(out.getvalue())
    assert record["exc_type"] == "ValueError" and record["level"] == "ERROR"
    assert any("test_logging.py" in frame for frame in record["stack"])
    assert CANARY_BAD not in out.getvalue()


def test_a_request_id_reaches_log_lines_written_during_the_request(
        api: Api, log_lines: io.StringIO) -> None:
    @api.app.get("/v1/_log_probe")
    def _probe() -> dict[str, str]:
        logging.getLogger("privacy_api.probe").warning("inside")
        return {}

    api.get("/v1/_log_probe", headers={"X-Request-ID": "probe-request-1"})
    inside = [r for r in _records(log_lines) if r["logger"] == "privacy_api.probe"]
    assert inside and inside[0]["request_id"] == "probe-request-1"
