"""Federations: only a parameters-only context of a shipped preset is stored; floors; enrolment;
identity keys; who sees what."""

from __future__ import annotations

import base64
import re

import pytest
import tenseal as ts
from sqlalchemy import select

from privacy_api.storage.models import Federation
from tests.federated.support import World


def _context(*, secret: bool = False, galois: bool = False, relin: bool = False,
             public: bool = False, degree: int = 8192, bits: tuple[int, ...] = (60, 60)) -> bytes:
    kind = ts.ENCRYPTION_TYPE.ASYMMETRIC if public or relin or galois else ts.ENCRYPTION_TYPE.SYMMETRIC
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=degree, coeff_mod_bit_sizes=list(bits),
                     encryption_type=kind)
    ctx.global_scale = 2**40
    if galois:
        ctx.generate_galois_keys()
    return bytes(ctx.serialize(save_public_key=public, save_secret_key=secret,
                               save_galois_keys=galois, save_relin_keys=relin))


def _create(world: World, **overrides: object) -> object:
    body = {"name": "f", "public_context": world.public_b64(), "vector_length": 10, "min_clients": 3}
    body.update(overrides)
    return world.api.as_(world.owner_key).post("/v1/federations", json=body)


def test_federation_stores_only_the_public_context(world: World) -> None:
    resp = _create(world)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["preset"] == "n8192" and body["dp"] is None and body["clients"] == []
    assert body["vector_length"] == 10 and body["min_clients"] == 3 and body["max_update_bytes"] > 0
    # Both reads inside the block: a read on `s` after it would begin a transaction nobody
    # ends, holding a lock on `federations` until the garbage collector happens to run, and
    # the next test's TRUNCATE would wait for it (forever if the collector did not run).
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        stored = s.scalar(select(Federation.public_context))
        wrapped = s.scalar(select(Federation.wrapped_key))
    assert bytes(stored) == world.keys.public
    assert b"secret" not in stored.lower() and len(stored) < 200  # parameters only
    assert wrapped is not None and len(wrapped) > 32  # the federation key exists only wrapped


@pytest.mark.parametrize(("context", "why"), [
    (lambda w: w.keys.secret, "private key"),
    (lambda w: _context(secret=True), "private key"),
    (lambda w: _context(relin=True), "relinearization|symmetric"),
    (lambda w: _context(public=True), "symmetric"),
    (lambda w: _context(degree=8192, bits=(60, 40, 40, 60)), "not an accepted preset"),
    (lambda w: _context(degree=16384, bits=(60, 60)), "preset"),
    (lambda w: b"not a context at all", "context"),
    (lambda w: b"", "empty"),
], ids=["sdk-secret", "secret", "relin", "public-key", "4-level", "n16384", "garbage", "empty"])
def test_refused_contexts(world: World, context, why: str) -> None:
    resp = _create(world, public_context=base64.b64encode(context(world)).decode())
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["code"] == "invalid_request" and re.search(why, body["message"]), body


def test_galois_keys_are_refused(world: World) -> None:
    resp = _create(world, public_context=base64.b64encode(_context(galois=True)).decode())
    assert resp.status_code == 400
    assert re.search("Galois|symmetric", resp.get_json()["message"])


@pytest.mark.parametrize(("overrides", "field"), [
    ({"public_context": "***not base64***"}, "public_context"),
    ({"min_clients": 1}, "min_clients"),
    ({"min_clients": 2}, "min_clients"),  # floor: with two, each learns the other's update
    ({"dp": {"clip_norm": 1.0, "noise_multiplier": 5.0, "noise_skippers": 3}, "delta": 1e-5,
      "epsilon_cap": 10}, "noise_skippers"),
    ({"vector_length": 0}, "vector_length"),
    ({"vector_length": 40_000_000}, "vector_length"),  # over the upload limit
    ({"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}}, "delta"),
    ({"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}, "delta": 1e-5}, "epsilon_cap"),
    ({"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}, "delta": 0.01, "epsilon_cap": 5}, "delta"),
    ({"dp": {"clip_norm": 1.0, "noise_multiplier": 0.5}, "delta": 1e-5, "epsilon_cap": 1}, "epsilon_cap"),
    ({"dp": {"clip_norm": 0, "noise_multiplier": 1.0}, "delta": 1e-5, "epsilon_cap": 1}, "dp"),
    ({"epsilon_cap": 3}, "dp"),
    ({"name": "f", "epsilson": 1}, "epsilson"),
])
def test_invalid_federations(world: World, overrides: dict, field: str) -> None:
    resp = _create(world, **overrides)
    assert resp.status_code == 422, resp.get_json()
    assert field in str(resp.get_json()["details"]), resp.get_json()


def test_enrolment(world: World) -> None:
    fed = world.federation(vector_length=3, enroll=0)
    owner = world.api.as_(world.owner_key)
    client_id = world.clients[0][0]

    first = owner.post(f"/v1/federations/{fed}/clients", json={"user_id": client_id})
    again = owner.post(f"/v1/federations/{fed}/clients", json={"user_id": client_id})
    owner_as_client = owner.post(f"/v1/federations/{fed}/clients", json={"user_id": world.owner_id})
    nobody = owner.post(f"/v1/federations/{fed}/clients", json={"user_id": 9999})

    assert first.status_code == 201 and first.get_json()["user_id"] == client_id
    assert again.status_code == 409
    assert owner_as_client.status_code == 422 and "role client" in owner_as_client.get_json()["message"]
    assert nobody.status_code == 404
    assert world.owner.federation(fed)["clients"] == [client_id]
    seen_by_client = world.client(0).federation(fed)
    assert "clients" not in seen_by_client and seen_by_client["preset"] == "n8192"
    assert [f["id"] for f in world.client(0).federations()] == [fed]


def test_other_owners_see_nothing_and_cannot_act(world: World) -> None:
    fed = world.federation(vector_length=3)
    rnd = world.owner.open_round(fed)["id"]
    _, other = world.api.user("other-owner", "owner")
    _, analyst = world.api.user("analyst", "analyst")
    as_other = world.api.as_(other)

    assert as_other.get(f"/v1/federations/{fed}").status_code == 404
    assert as_other.get("/v1/federations").get_json() == []
    assert as_other.post(f"/v1/federations/{fed}/rounds", json={}).status_code == 404
    assert as_other.post(f"/v1/federations/{fed}/clients",
                         json={"user_id": world.outsider[0]}).status_code == 404
    assert as_other.post(f"/v1/rounds/{rnd}/close").status_code == 404
    assert as_other.get(f"/v1/rounds/{rnd}").status_code == 404
    assert world.api.as_(analyst).get(f"/v1/federations/{fed}").status_code == 403
    assert world.owner.round(rnd)["status"] == "open"
