"""GET /v1/ledger/export streams NDJSON that verifies offline, with no database or secret."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from privacy_api.domain import ledger_chain
from privacy_api.services.ledger_audit import verify_export
from tests.ledger.conftest import Ledger, verify_cli


def _export(book: Ledger, query: str = "") -> list[dict[str, Any]]:
    resp = book.api.as_(book.admin).get(f"/v1/ledger/export{query}")
    assert resp.status_code == 200, resp.get_data()
    assert resp.mimetype == "application/x-ndjson"
    assert resp.is_streamed  # a generator response, not a body built in memory
    return [orjson.loads(line) for line in resp.get_data().splitlines()]


def test_the_export_verifies_offline(ledger: Ledger, tmp_path: Path):
    lines = _export(ledger)
    assert lines[0]["type"] == "export"
    heads = [x for x in lines if x["type"] == "head"]
    entries = [x for x in lines if x["type"] == "entry"]
    assert len(heads) == 2 and len(entries) == 14
    assert all(len(e["hash"]) == 64 and len(e["prev_hash"]) == 64 for e in entries)
    # an auditor recomputes each hash from the line itself
    assert all(ledger_chain.entry_hash(e) == e["hash"] for e in entries)
    assert verify_export(lines).ok
    path = tmp_path / "ledger.ndjson"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    result = verify_cli("sqlite:////nonexistent/no.db", "--export", str(path))
    assert result.exit_code == 0, result.output
    assert "ledger verified: 14 entries in 2 chains" in result.output


def test_a_tampered_export_fails_offline(ledger: Ledger, tmp_path: Path):
    lines = _export(ledger)
    entries = [x for x in lines if x["type"] == "entry"]
    entries[3]["epsilon_charged"] -= 1
    report = verify_export(lines)
    assert not report.ok
    assert any(p.entry == entries[3]["id"] and "stored hash" in p.message for p in report.problems)
    lines.remove(entries[-1])  # a dropped line: the head line still anchors the chain
    problems = " ".join(str(p) for p in verify_export(lines).problems)
    assert "entries deleted or added at the end" in problems
    path = tmp_path / "bad.ndjson"
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    result = verify_cli("sqlite:////nonexistent/no.db", "--export", str(path))
    assert result.exit_code == 1 and entries[3]["id"] in result.output


def test_filters_and_authorization(ledger: Ledger):
    uid, analyst = ledger.analysts[1]
    chain = ledger_chain.budget_chain(uid, ledger.ds)
    one = _export(ledger, f"?budget={chain}")
    assert {x["chain"] for x in one if x["type"] != "export"} == {chain}
    assert verify_export(one).ok
    entries = [x for x in one if x["type"] == "entry"]
    since = entries[3]["created_at"].replace(" ", "T") + "%2B00:00"
    later = _export(ledger, f"?since={since}")
    assert [x["seq"] for x in later if x["type"] == "entry" and x["chain"] == chain] == [4, 5, 6, 7]
    assert verify_export(later).ok  # links and heads from seq 4 on
    assert ledger.api.as_(analyst).get("/v1/ledger/export").status_code == 403
    assert ledger.api.as_(None).get("/v1/ledger/export").status_code == 401
    bad = ledger.api.as_(ledger.admin).get("/v1/ledger/export?budget=x;drop")
    assert bad.status_code == 422 and bad.get_json()["code"]
    assert ledger.api.as_(ledger.admin).get("/v1/ledger/export?since=yesterday").status_code == 422
    assert ledger.api.as_(ledger.admin).get("/v1/ledger/export?foo=1").status_code == 422
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    none = _export(ledger, f"?since={future.replace('+', '%2B')}")
    assert not [x for x in none if x["type"] == "entry"] and verify_export(none).ok


def test_the_export_is_documented_in_openapi(ledger: Ledger):
    spec = ledger.api.get("/openapi.json").get_json()
    op = spec["paths"]["/v1/ledger/export"]["get"]
    assert "application/x-ndjson" in op["responses"]["200"]["content"]
    assert {p["name"] for p in op["parameters"]} >= {"budget", "since"}
