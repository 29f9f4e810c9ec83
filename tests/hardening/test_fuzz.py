"""Schemathesis against /openapi.json, in process: every check, positive and negative data.

Every operation runs as the role it is meant for, so generated requests reach the handlers
rather than stopping at 401/403. Schema-valid requests are steered onto a real dataset and
real column names part of the time (the schema cannot name a dataset's columns), so the
query planner, the mechanisms and the upload validator see fuzzed parameters too.

Examples per operation: PRIVACY_API_FUZZ_EXAMPLES, default 500 (25 operations, about 3 minutes
on 2 cores with `-n 2`); lower it for a quick local run. Hypothesis is derandomized, so a
failure reproduces on the next run.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from privacy_api import create_app
from privacy_api.services.budgets import set_budget
from privacy_client import generate_keys
from tests.conftest import make_app
from tests.helpers import PATIENTS_SCHEMA, Api, patient_rows

EXAMPLES = int(os.environ.get("PRIVACY_API_FUZZ_EXAMPLES", "500"))
COLUMNS = [c["name"] for c in PATIENTS_SCHEMA["columns"]]


class WsgiSlot:
    """The WSGI app Schemathesis talks to; the fixture plugs in the seeded app per module."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


def _load_schema(slot: WsgiSlot) -> Any:
    # The document depends on code only, not on data: read it from a throwaway app.
    from tests.conftest import MASTER_KEY

    tmp = tempfile.mkdtemp(prefix="fuzz-spec-")
    try:
        slot.target = create_app({"database_url": f"sqlite:///{tmp}/spec.sqlite3",
                                  "master_keys": [MASTER_KEY]})
        loaded = schemathesis.openapi.from_wsgi("/openapi.json", slot)
        slot.target.extensions["privacy_api"].db.dispose()
        slot.target = None
        return loaded
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SLOT = WsgiSlot()
schema = _load_schema(SLOT)


class Env:
    def __init__(self, app: Any) -> None:
        api = Api(app)
        self.app = app
        _, admin = api.user("fuzz-admin", "admin")
        _, owner = api.user("fuzz-owner", "owner")
        _, self.other_owner = api.user("fuzz-other-owner", "owner")
        self.analyst_id, analyst = api.user("fuzz-analyst", "analyst")
        self.analyst2_id, _ = api.user("fuzz-analyst-2", "analyst")
        _, client = api.user("fuzz-client", "client")
        self.keys = {"admin": admin, "owner": owner, "analyst": analyst, "client": client}
        self.dataset_id = api.dataset(owner, rows=patient_rows(40))
        self.reset_budget()
        self.federation_id, self.round_id = self._federation(api, owner, client)

    @staticmethod
    def _federation(api: Api, owner: str, client: str) -> tuple[int, int]:
        _, public = generate_keys("n4096")
        fed = api.as_(owner).post("/v1/federations", json={
            "name": "fuzz", "public_context": base64.b64encode(public).decode(),
            "vector_length": 8, "min_clients": 3})
        assert fed.status_code == 201, fed.get_json()
        fed_id = fed.get_json()["id"]
        client_id = api.as_(client).get("/v1/me").get_json()["id"]
        enrol = api.as_(owner).post(f"/v1/federations/{fed_id}/clients", json={"user_id": client_id})
        assert enrol.status_code == 201, enrol.get_json()
        rnd = api.as_(owner).post(f"/v1/federations/{fed_id}/rounds", json={})
        assert rnd.status_code == 201, rnd.get_json()
        return fed_id, rnd.get_json()["id"]

    def reset_budget(self) -> None:
        st = self.app.extensions["privacy_api"]
        with st.db.transaction() as session:
            set_budget(session, None, self.analyst_id, self.dataset_id,
                       epsilon=Decimal(10**6), delta=Decimal("0.5"), frozen=False,
                       max_delta=Decimal("0.5"))

    def key_for(self, case: Any) -> str:
        """A key of the first role the operation's security names (analyst if any role)."""
        if case.method.upper() == "DELETE" and case.path.startswith("/v1/datasets"):
            return self.other_owner  # must not delete the dataset every other operation uses
        roles = [role for req in case.operation.definition.raw.get("security") or []
                 for scopes in req.values() for role in scopes]
        return self.keys[roles[0] if roles else "analyst"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Any) -> Iterator[Env]:
    path = tmp_path_factory.mktemp("fuzz") / "db.sqlite3"
    shutil.copy(sqlite_template, path)
    # The 64 KiB JSON cap answers 413, which schemathesis does not count as a refusal of negative
    # data; the cap has its own tests (test_work_limits.py), so the fuzz reaches the validators.
    app = make_app(f"sqlite:///{path}", max_json_bytes=16 * 1024 * 1024)
    SLOT.target = app
    yield Env(app)
    SLOT.target = None
    app.extensions["privacy_api"].cache.close()
    app.extensions["privacy_api"].db.dispose()


def _pick(name: Any, choices: list[str]) -> Any:
    # A stable mapping from a generated string to a real name: same input, same column.
    if not isinstance(name, str):
        return name
    return choices[zlib.crc32(name.encode()) % len(choices)]


def _steer(case: Any, env: Env) -> None:
    """Point part of the schema-valid cases at the real dataset, users and columns."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    params = case.path_parameters or {}
    targets = [("dataset_id", env.dataset_id), ("user_id", env.analyst2_id),
               ("federation_id", env.federation_id)]
    if not case.path.endswith("/close"):  # keep the round open for the other operations
        targets.append(("round_id", env.round_id))
    for name, real in targets:
        value = params.get(name)
        if isinstance(value, int) and value % 4 != 0:
            params[name] = real
    body = case.body
    if "/query" in case.path and isinstance(body, dict):
        if isinstance(body.get("column"), str):
            body["column"] = _pick(body["column"], COLUMNS)
        if isinstance(body.get("group_by"), list):
            body["group_by"] = [_pick(c, COLUMNS) for c in body["group_by"]]
        for cond in body.get("where") or []:
            if isinstance(cond, dict):
                cond["column"] = _pick(cond.get("column"), COLUMNS)
        eps = body.get("epsilon")
        if isinstance(eps, int | float) and not 0 < eps <= 10:
            body["epsilon"] = min(abs(eps) % 10 + 0.01, 10)


# Statuses a schema-valid request may get without the schema being wrong: the contract's
# domain refusals (checked against data the schema cannot see).
DOMAIN_REFUSALS = {400, 409, 415, 422}
# Where APIFlask puts its own (schema) validation errors; a 422 keyed like this for a
# schema-valid request means the document and the validator disagree.
SCHEMA_LOCATIONS = {"json", "query", "path", "headers", "cookies", "form", "files"}


def _check_positive_refusal(case: Any, response: Any) -> None:
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return
    if response.status_code not in DOMAIN_REFUSALS:
        return
    body = response.json()
    assert body["code"] == "invalid_request" or response.status_code in (409, 415), body
    details = body.get("details") or {}
    assert not SCHEMA_LOCATIONS & set(details), (
        f"schema-valid request refused by the schema validator: {body}")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_survives_fuzzing(case: Any, env: Env) -> None:
    _steer(case, env)
    if "/query" in case.path:
        env.reset_budget()
    # A negative case that mutates headers (e.g. drops Authorization) is sent as generated.
    mutated_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    response = case.call_and_validate(
        headers=None if mutated_headers else {"Authorization": f"Bearer {env.key_for(case)}"},
        # Replaced by _check_positive_refusal: the schema cannot know a dataset's columns.
        excluded_checks=[positive_data_acceptance],
    )
    _check_positive_refusal(case, response)
