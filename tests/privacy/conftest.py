"""An adversarial analyst's set-up: neighbouring datasets that differ by one person."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import Api

SCHEMA: dict[str, Any] = {
    "name": "people",
    "columns": [
        {"name": "name", "type": "category", "categories": ["alice", "bob", "carol", "dave"]},
        {"name": "x", "type": "float", "lower": 0, "upper": 1},
        {"name": "n", "type": "int", "lower": 0, "upper": 100},
        {"name": "smoker", "type": "bool"},
    ],
}
OTHERS = [{"name": "bob", "x": 0.3, "n": 40, "smoker": True},
          {"name": "carol", "x": 0.7, "n": 60, "smoker": False},
          {"name": "dave", "x": 0.55, "n": 25, "smoker": True}]
ALICE = {"name": "alice", "x": 1.0, "n": 100, "smoker": False}


def _no_constant(name: str) -> Any:
    raise AssertionError(f"the body holds {name}, which is not JSON")


def strict_body(resp: Any) -> Any:
    """The response body parsed by a JSON parser that refuses NaN and Infinity."""
    return json.loads(resp.get_data(as_text=True), parse_constant=_no_constant)


class World:
    """One dataset (with or without Alice) and an analyst with a large budget on it."""

    def __init__(self, api: Api, rows: list[dict[str, Any]], label: str) -> None:
        _, admin = api.user(f"admin-{label}", "admin")
        _, owner = api.user(f"owner-{label}", "owner")
        self.analyst_id, key = api.user(f"analyst-{label}", "analyst")
        self.ds = api.dataset(owner, schema={**SCHEMA, "name": f"people_{label}"}, rows=rows)
        resp = api.as_(admin).put(f"/v1/budgets/{self.analyst_id}/{self.ds}",
                                  json={"epsilon": 100_000, "delta": 1e-3})
        assert resp.status_code == 200, resp.get_json()
        self.analyst = api.as_(key)
        self.asked = 0

    def query(self, **spec: Any) -> Any:
        return self.analyst.post(f"/v1/datasets/{self.ds}/query", json=spec)

    def fresh(self, epsilon: float, **spec: Any) -> dict[str, Any]:
        """A charged (never replayed) answer: ε moves by 1e-9 each time."""
        self.asked += 1
        resp = self.query(epsilon=round(epsilon + self.asked * 1e-9, 12), **spec)
        assert resp.status_code == 200, resp.get_json()
        body: dict[str, Any] = strict_body(resp)
        assert not body["replayed"]
        return body


@pytest.fixture
def worlds(api: Api) -> tuple[World, World]:
    """(with Alice, without Alice): neighbouring datasets."""
    return World(api, [ALICE, *OTHERS], "with"), World(api, list(OTHERS), "without")
