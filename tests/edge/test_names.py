"""Column, dataset, category, user and federation names: no look-alikes, no hidden characters."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import PATIENTS_SCHEMA, Api

HIDDEN = {
    "trailing newline": "age\n", "leading space": " age", "trailing space": "age ",
    "NUL": "a\x00ge", "tab": "a\tge", "escape": "a\x1bge", "RLO": "ag\u202ee",
    "RLI": "ag\u2067e", "LRM": "age\u200e", "zero-width space": "a\u200bge",
    "zero-width joiner": "a\u200dge", "BOM": "\ufeffage", "word joiner": "ag\u2060e",
    "line separator": "a\u2028ge", "private use": "a\ue000ge", "unassigned": "a\U000e0fffge",
}


def _schema(columns: list[dict[str, Any]], name: str = "d") -> dict[str, Any]:
    return {"name": name, "columns": columns, "privacy_unit": None}


def _refused(resp: Any, *fragments: str) -> dict[str, Any]:
    assert resp.status_code == 422, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    assert body["code"] == "invalid_request" and body["details"]
    for fragment in fragments:
        assert fragment in str(body), (fragment, body)
    return body


@pytest.fixture
def owner(api: Api) -> Api:
    _, key = api.user("olga", "owner")
    return api.as_(key)


def test_a_column_name_with_a_trailing_newline_is_refused(owner: Api) -> None:
    cols = [{"name": "age", "type": "int", "lower": 0, "upper": 9},
            {"name": "age\n", "type": "int", "lower": 0, "upper": 9}]
    _refused(owner.post("/v1/datasets", json=_schema(cols)), "columns.1")
    assert owner.get("/v1/datasets").get_json() == []


def test_hidden_characters_are_refused_in_every_kind_of_name(owner: Api) -> None:
    for bad in HIDDEN.values():
        column = [{"name": bad, "type": "bool"}]
        _refused(owner.post("/v1/datasets", json=_schema(column)), "columns.0")
        _refused(owner.post("/v1/datasets", json={**PATIENTS_SCHEMA, "name": bad}), "name")
        category = [{"name": "ward", "type": "category", "categories": ["a", bad]}]
        _refused(owner.post("/v1/datasets", json=_schema(category)), "columns.0", "category")
    assert owner.get("/v1/datasets").get_json() == []


def test_user_names_are_checked_too(api: Api) -> None:
    _, admin = api.user("root", "admin")
    a = api.as_(admin)
    for bad in ("root\n", " root", "ro\u202eot", "r\u200boot", "root\x00"):
        _refused(a.post("/v1/users", json={"name": bad, "role": "analyst"}), "name")
    assert [u["name"] for u in a.get("/v1/users").get_json()] == ["root"]


def test_names_collide_after_case_folding_and_normalisation(owner: Api) -> None:
    cols = [{"name": "Age", "type": "int", "lower": 0, "upper": 9},
            {"name": "age", "type": "int", "lower": 0, "upper": 9}]
    _refused(owner.post("/v1/datasets", json=_schema(cols)), "letter case")
    for pair in (["Ward", "ward"], ["ﬁle", "file"], ["Ａ", "A"]):
        cats = [{"name": "c", "type": "category", "categories": pair}]
        _refused(owner.post("/v1/datasets", json=_schema(cats)), "differ only")
    decomposed = [{"name": "c", "type": "category", "categories": ["Me\u0301nez"]}]
    _refused(owner.post("/v1/datasets", json=_schema(decomposed)), "NFC")


def test_readable_names_still_work_and_are_normalised(owner: Api) -> None:
    cats = [{"name": "region", "type": "category", "categories": ["Zürich", "São Paulo", "東京", "F", "M"]}]
    resp = owner.post("/v1/datasets", json=_schema(cats, name="Café visits 2026"))
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["name"] == "Café visits 2026"
    decomposed = owner.post("/v1/datasets", json={**PATIENTS_SCHEMA, "name": "Cafe\u0301"})
    assert decomposed.status_code == 201 and decomposed.get_json()["name"] == "Caf\u00e9"
    ds = resp.get_json()["id"]
    up = owner.post(f"/v1/datasets/{ds}/records", json=[{"region": "Zürich"}, {"region": "東京"}])
    assert up.status_code == 201, up.get_json()
