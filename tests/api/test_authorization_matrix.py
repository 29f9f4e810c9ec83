"""Role x endpoint: every pair is allowed or refused as intended, and nobody sees others' objects.

The table is printed (pytest -s) so a reviewer can read the policy at a glance.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from privacy_client import FederatedClient, encrypt_update, generate_keys
from tests.helpers import PATIENTS_SCHEMA, patient_rows

_SECRET, _PUBLIC = generate_keys("n8192")
_FEDERATION = {"name": "fed-{role}", "public_context": base64.b64encode(_PUBLIC).decode(),
               "vector_length": 1, "min_clients": 3}

ROLES = ("admin", "owner", "other_owner", "analyst", "other_analyst", "client", "anonymous")
A, R = "allow", "refuse"

# endpoint -> (method, path template, body, {role: expectation})
MATRIX: dict[str, tuple[str, str, object, dict[str, str]]] = {
    "POST /v1/users": ("POST", "/v1/users", {"name": "new-{role}", "role": "analyst"},
                       {"admin": A}),
    "GET /v1/users": ("GET", "/v1/users", None, {"admin": A}),
    "GET /v1/users/{id}": ("GET", "/v1/users/{analyst_id}", None, {"admin": A}),
    "POST /v1/users/{id}/keys": ("POST", "/v1/users/{analyst_id}/keys", None, {"admin": A}),
    "GET /v1/me": ("GET", "/v1/me", None,
                   {r: A for r in ROLES if r != "anonymous"}),
    "POST /v1/datasets": ("POST", "/v1/datasets", {**PATIENTS_SCHEMA, "name": "ds-{role}"},
                          {"admin": A, "owner": A, "other_owner": A}),
    "GET /v1/datasets/{id}": ("GET", "/v1/datasets/{ds}", None,
                              {"admin": A, "owner": A, "analyst": A}),
    "POST /v1/datasets/{id}/records": ("POST", "/v1/datasets/{ds}/records", patient_rows(2),
                                       {"admin": A, "owner": A}),
    "PUT /v1/budgets/{uid}/{ds}": ("PUT", "/v1/budgets/{analyst_id}/{ds}", {"epsilon": 5},
                                   {"admin": A}),
    "GET /v1/budgets": ("GET", "/v1/budgets", None,
                        {"admin": A, "owner": A, "other_owner": A, "analyst": A,
                         "other_analyst": A}),
    "POST /v1/datasets/{id}/query": ("POST", "/v1/datasets/{ds}/query",
                                     {"aggregate": "count", "epsilon": 0.01}, {"analyst": A}),
    "POST /v1/datasets/{id}/query/estimate": ("POST", "/v1/datasets/{ds}/query/estimate",
                                              {"aggregate": "count", "epsilon": 0.01},
                                              {"analyst": A}),
    "POST /v1/datasets/{id}/sql": ("POST", "/v1/datasets/{ds}/sql",
                                   {"sql": "SELECT COUNT(*) FROM patients", "epsilon": 0.01},
                                   {"analyst": A}),
    "POST /v1/datasets/{id}/sql/estimate": ("POST", "/v1/datasets/{ds}/sql/estimate",
                                            {"sql": "SELECT COUNT(*) FROM patients",
                                             "epsilon": 0.01}, {"analyst": A}),
    "GET /v1/queries": ("GET", "/v1/queries", None, {"admin": A, "analyst": A,
                                                      "other_analyst": A}),
    # federated: "client" is enrolled in the owner's federation; a body may be a callable of
    # the world, and bytes are sent as application/octet-stream
    "POST /v1/federations": ("POST", "/v1/federations", _FEDERATION,
                             {"owner": A, "other_owner": A}),
    "GET /v1/federations": ("GET", "/v1/federations", None,
                            {"admin": A, "owner": A, "other_owner": A, "client": A}),
    "GET /v1/federations/{id}": ("GET", "/v1/federations/{fed}", None,
                                 {"admin": A, "owner": A, "client": A}),
    "POST /v1/federations/{id}/clients": ("POST", "/v1/federations/{fed}/clients",
                                          lambda w: {"user_id": w["ids"]["spare_client"]},
                                          {"owner": A}),
    "POST /v1/federations/{id}/rounds": ("POST", "/v1/federations/{fed}/rounds", {},
                                         {"owner": A}),
    "GET /v1/rounds/{id}": ("GET", "/v1/rounds/{rnd}", None, {"admin": A, "owner": A, "client": A}),
    "GET /v1/federations/{id}/roster": ("GET", "/v1/federations/{fed}/roster", None,
                                        {"admin": A, "owner": A, "client": A}),
    "GET /v1/rounds/{id}/keys": ("GET", "/v1/rounds/{rnd}/keys", None, {"client": A}),
    "GET /v1/rounds/{id}/shares": ("GET", "/v1/rounds/{rnd}/shares", None, {"client": A}),
    "POST /v1/rounds/{id}/updates": ("POST", "/v1/rounds/{collecting}/updates",
                                     encrypt_update(_SECRET, [0.5], 1.0), {"client": A}),
    "POST /v1/rounds/{id}/close": ("POST", "/v1/rounds/{rnd}/close", None, {"owner": A}),
    "GET /v1/rounds/{id}/aggregate": ("GET", "/v1/rounds/{rnd}/aggregate", None,
                                      {"owner": A, "client": A}),
    # disable, then at once re-enable, the analyst (admins only)
    "POST /v1/users/{id}/disable": ("POST", "/v1/users/{analyst_id}/disable", None, {"admin": A}),
    "POST /v1/users/{id}/enable": ("POST", "/v1/users/{analyst_id}/enable", None, {"admin": A}),
    "DELETE /v1/datasets/{id}": ("DELETE", "/v1/datasets/{ds}", None, {"admin": A, "owner": A}),
}


@pytest.fixture
def world(api, tmp_path):
    keys: dict[str, str | None] = {"anonymous": None}
    ids: dict[str, int] = {}
    for role in ROLES[:-1]:
        base = role.removeprefix("other_")
        ids[role], keys[role] = api.user(role, base)
    ds = api.dataset(keys["owner"], rows=patient_rows(5))
    api.as_(keys["admin"]).put(f"/v1/budgets/{ids['analyst']}/{ds}", json={"epsilon": 100})
    # a federation of "client" and two more clients: one released round (`rnd`), and one in its
    # collect stage (`collecting`) where only "client"'s update is missing
    ids["spare_client"], _ = api.user("spare-client", "client")
    others = [api.user(f"client-{i}", "client") for i in (2, 3)]
    owner = api.as_(keys["owner"])
    fed = owner.post("/v1/federations", json={**_FEDERATION, "name": "fed"}).get_json()["id"]
    for user_id in (ids["client"], *(u for u, _ in others)):
        owner.post(f"/v1/federations/{fed}/clients", json={"user_id": user_id})
    transport = httpx.WSGITransport(app=api.app)
    sdks = [FederatedClient("http://testserver", key, _SECRET, transport=transport,
                            state_dir=tmp_path) for key in (keys["client"], *(k for _, k in others))]
    rounds = [owner.post(f"/v1/federations/{fed}/rounds", json={}).get_json()["id"]
              for _ in range(2)]
    for rnd in rounds:
        for sdk in sdks:
            sdk.advertise(rnd)
        for sdk in sdks:
            sdk.share(rnd)
    for sdk in sdks:
        sdk.submit(rounds[0], [0.5], 1.0)
    for sdk in [*sdks, *sdks]:  # sign, then reveal once t signed
        sdk.unmask(rounds[0])
    for sdk in sdks[1:]:
        sdk.submit(rounds[1], [1.5], 1.0)
    for sdk in sdks:
        sdk.close()
    return {"api": api, "keys": keys, "ids": ids, "ds": ds, "fed": fed, "rnd": rounds[0],
            "collecting": rounds[1]}


def test_role_endpoint_matrix(world, capsys):
    api, keys = world["api"], world["keys"]
    lines = [f"{'endpoint':42} " + " ".join(f"{r[:13]:>13}" for r in ROLES)]
    failures = []
    # destructive endpoint last
    for name, (method, path, body, allowed) in MATRIX.items():
        row = []
        for role in ROLES:
            expected = allowed.get(role, R)
            url = path.format(ds=world["ds"], analyst_id=world["ids"]["analyst"],
                              fed=world["fed"], rnd=world["rnd"], collecting=world["collecting"])
            if name.startswith("DELETE") and expected == A and role != "owner":
                # deleting is checked once, by the owner, after everyone else was refused
                row.append("allow*")
                continue
            payload = body(world) if callable(body) else body
            if isinstance(payload, dict):
                payload = {k: (v.format(role=role) if isinstance(v, str) else v)
                           for k, v in payload.items()}
            if isinstance(payload, bytes):
                resp = api.as_(keys[role]).request(
                    method, url, data=payload, headers={"Content-Type": "application/octet-stream"})
            else:
                resp = api.as_(keys[role]).request(method, url, json=payload)
            got = A if resp.status_code < 400 else R
            if resp.status_code >= 400:
                assert resp.get_json()["code"] in ("unauthorized", "forbidden", "not_found"), resp.get_json()
                if role == "anonymous":
                    assert resp.status_code == 401
            if got != expected:
                failures.append(f"{name} as {role}: expected {expected}, got {resp.status_code}")
            row.append(got)
        lines.append(f"{name:42} " + " ".join(f"{c:>13}" for c in row))
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not failures, failures


def test_no_object_is_visible_without_rights(world):
    api, keys, ds = world["api"], world["keys"], world["ds"]
    for role in ("other_owner", "other_analyst", "client"):
        body = api.as_(keys[role]).get(f"/v1/datasets/{ds}")
        assert body.status_code == 404
        listed = api.as_(keys[role]).get("/v1/datasets").get_json()
        assert all(d["id"] != ds for d in listed)
    assert api.as_(keys["other_owner"]).get("/v1/budgets").get_json() == []
    assert api.as_(keys["other_analyst"]).get("/v1/budgets").get_json() == []
    api.as_(keys["analyst"]).post(f"/v1/datasets/{ds}/query", json={"aggregate": "count", "epsilon": 0.01})
    assert api.as_(keys["other_analyst"]).get("/v1/queries").get_json() == []
