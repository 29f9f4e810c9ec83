"""Test data and the admin calls the SDK's tests need (the SDK itself has no admin API)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

PATIENTS_SCHEMA: dict[str, Any] = {
    "name": "patients",
    "columns": [
        {"name": "patient_id", "type": "id"},
        {"name": "age", "type": "int", "lower": 0, "upper": 100},
        {"name": "sex", "type": "category", "categories": ["F", "M"]},
        {"name": "cost", "type": "float", "lower": 0, "upper": 10000},
        {"name": "smoker", "type": "bool"},
    ],
    "privacy_unit": {"column": "patient_id", "max_rows": 1},
}


def patient_rows(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"patient_id": f"p{start + i}", "age": (start + i) % 90, "sex": "FM"[i % 2],
         "cost": round(100.0 + (i * 37) % 5000 + 0.25, 2), "smoker": i % 3 == 0}
        for i in range(n)
    ]


@dataclass(frozen=True)
class Served:
    """The app under test and an admin's raw HTTP access to it (the SDK has no admin calls)."""

    url: str
    admin_key: str

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = httpx.request(method, self.url + path, timeout=30,
                             headers={"Authorization": f"Bearer {self.admin_key}"}, **kwargs)
        assert resp.status_code < 300, (resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def user(self, role: str) -> tuple[int, str]:
        """A new user of `role` (unique name); returns (id, api_key)."""
        body = self.admin("POST", "/v1/users", json={"name": f"{role}-{uuid.uuid4().hex[:12]}",
                                                      "role": role})
        return body["id"], body["api_key"]

    def grant(self, user_id: int, dataset_id: int, epsilon: float) -> None:
        self.admin("PUT", f"/v1/budgets/{user_id}/{dataset_id}", json={"epsilon": epsilon})
