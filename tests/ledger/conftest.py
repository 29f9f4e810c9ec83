"""A ledger with every kind of entry, on real SQLite and PostgreSQL, and the CLI to check it."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner, Result

from privacy_api.app.cli import main
from tests.conftest import MASTER_KEY
from tests.helpers import Api, patient_rows


def verify_cli(db_url: str, *args: str) -> Result:
    env = {"PRIVACY_API_DATABASE_URL": db_url, "PRIVACY_API_MASTER_KEYS": MASTER_KEY.decode(),
           "PRIVACY_API_MASTER_KEY_FILE": ""}
    return CliRunner().invoke(main, ["verify-ledger", *args], env=env, catch_exceptions=False)


class Ledger:
    def __init__(self, api: Api, admin: str, analysts: list[tuple[int, str]], ds: int) -> None:
        self.api, self.admin, self.analysts, self.ds = api, admin, analysts, ds

    def query(self, key: str, **spec: Any) -> Any:
        return self.api.as_(key).post(f"/v1/datasets/{self.ds}/query", json=spec)


@pytest.fixture
def ledger(app: Any) -> Ledger:
    """Two analysts on one dataset: Laplace queries (the quick path), a Gaussian one (the full
    path), a replay and a SQL statement, so both chains have several kinds of entry."""
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("own", "owner")
    analysts = [api.user(f"ana{i}", "analyst") for i in range(2)]
    ds = api.dataset(owner, rows=patient_rows(200))
    for uid, _ in analysts:
        assert api.as_(admin).put(f"/v1/budgets/{uid}/{ds}",
                                  json={"epsilon": 10, "delta": 1e-5}).status_code == 200
    book = Ledger(api, admin, analysts, ds)
    for i, (_, key) in enumerate(analysts):
        for age in range(3):
            assert book.query(key, aggregate="count", epsilon=0.1,
                              where=[{"column": "age", "op": ">=", "value": age + i}]
                              ).status_code == 200
        assert book.query(key, aggregate="count", epsilon=0.1).status_code == 200
        assert book.query(key, aggregate="count", epsilon=0.1).get_json()["replayed"]
        assert book.query(key, aggregate="mean", column="cost", mechanism="gaussian",
                          epsilon=0.5, delta=1e-7).status_code == 200
        assert api.as_(key).post(f"/v1/datasets/{ds}/sql", json={
            "sql": "SELECT COUNT(*) FROM patients WHERE smoker = true",
            "epsilon": 0.2}).status_code == 200
    return book
