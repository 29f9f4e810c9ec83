"""Test helpers that drive the app over its real HTTP interface (Flask's WSGI test client)."""

from __future__ import annotations

from typing import Any

from privacy_api.services.users import create_user

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


class Api:
    """A thin client: `api.as_(key).post(path, json=...)` returns the Flask test response."""

    def __init__(self, app: Any, key: str | None = None) -> None:
        self.app = app
        self.client = app.test_client()
        self.key = key

    def as_(self, key: str | None) -> Api:
        other = Api.__new__(Api)
        other.app, other.client, other.key = self.app, self.client, key
        return other

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                **kwargs: Any) -> Any:
        return self.client.open(path, method=method, headers=self._headers(headers), **kwargs)

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Any:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    def user(self, name: str, role: str) -> tuple[int, str]:
        """Create a user directly through the service (as the CLI does); returns (id, key)."""
        st = self.app.extensions["privacy_api"]
        with st.db.transaction() as session:
            user, key = create_user(session, name, role)
            return user.id, key

    def dataset(self, owner_key: str, schema: dict[str, Any] | None = None,
                rows: list[dict[str, Any]] | None = None) -> int:
        resp = self.as_(owner_key).post("/v1/datasets", json=schema or PATIENTS_SCHEMA)
        assert resp.status_code == 201, resp.get_json()
        ds_id: int = resp.get_json()["id"]
        if rows:
            up = self.as_(owner_key).post(f"/v1/datasets/{ds_id}/records", json=rows)
            assert up.status_code == 201, up.get_json()
        return ds_id
