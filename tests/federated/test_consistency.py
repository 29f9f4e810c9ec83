"""The consistency check's endpoints: each refusal answers in the JSON error shape and stores
nothing; shares are accepted only after the survivor signed the sets the server publishes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import privacy_secagg as secagg
from tests.federated.support import Keys, World


@pytest.fixture
def world(api: Any, keys: Keys) -> Iterator[World]:
    w = World.build(api, keys, clients=4)
    yield w
    w.close()


def _post(world: World, i: int, rnd: int, signature: bytes) -> Any:
    body = {"signature": base64.b64encode(signature).decode()}
    return world.api.as_(world.clients[i][1]).post(f"/v1/rounds/{rnd}/consistency", json=body)


def _signatures(world: World, i: int, rnd: int) -> list[Any]:
    response = world.api.as_(world.clients[i][1]).get(f"/v1/rounds/{rnd}/consistency")
    assert response.status_code == 200
    return list(response.get_json()["signatures"])


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body: dict[str, Any] = response.get_json()
    assert set(body) == {"code", "message", "details"}
    return body


def test_consistency_signatures_are_checked_on_arrival(world: World) -> None:
    fed = world.federation(vector_length=4, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(4))
    binding = secagg.round_binding(fed, rnd)
    for i in range(3):  # client 3 shared, then dropped
        world.client(i).submit(rnd, np.ones(4), 1.0)
    key = world.client(0)._identity_key()
    early = _post(world, 0, rnd, key.sign(b"anything"))
    assert "unmask" in _error(early, 409)["message"]
    world.owner.close_round(rnd)
    state = world.owner.round(rnd)
    assert state["stage"] == "unmask"
    survivors, dropped = state["survivors"], state["dropped"]
    assert dropped == [world.clients[3][0]]
    honest = key.sign(secagg.consistency_message(binding, survivors, dropped))

    _error(_post(world, 0, rnd, honest[:63]), 422)
    other_sets = key.sign(secagg.consistency_message(binding, survivors[:2], [*dropped, survivors[2]]))
    assert "does not verify" in _error(_post(world, 0, rnd, other_sets), 400)["message"]
    other_key = secagg.IdentityKey.generate().sign(secagg.consistency_message(binding, survivors, dropped))
    _error(_post(world, 0, rnd, other_key), 400)
    dropped_client = world.client(3)._identity_key()
    _error(
        _post(world, 3, rnd, dropped_client.sign(secagg.consistency_message(binding, survivors, dropped))),
        409,
    )
    assert _signatures(world, 1, rnd) == []  # nothing refused was stored

    # Shares before the signature: refused, nothing stored.
    body = {
        "self_seed_shares": [
            {"client_id": c, "share": base64.b64encode(b"\x00" * 32).decode()} for c in survivors
        ],
        "s_key_shares": [{"client_id": c, "share": base64.b64encode(b"\x00" * 32).decode()} for c in dropped],
    }
    unsigned = world.api.as_(world.clients[0][1]).post(f"/v1/rounds/{rnd}/unmask", json=body)
    assert "sign the survivor set" in _error(unsigned, 409)["message"]
    assert world.owner.round(rnd)["unmasked"] == []

    assert _post(world, 0, rnd, honest).status_code == 202
    _error(_post(world, 0, rnd, honest), 409)  # once
    listed = _signatures(world, 2, rnd)
    assert [s["client_id"] for s in listed] == [world.clients[0][0]]
    secagg.verify_signature(
        key.public_bytes(),
        secagg.consistency_message(binding, survivors, dropped),
        base64.b64decode(listed[0]["signature"]),
    )


def test_sdk_reveals_only_after_t_signatures_and_the_round_releases(world: World) -> None:
    fed = world.federation(vector_length=4, min_clients=3)
    rnd = int(world.owner.open_round(fed)["id"])
    world.prepare(rnd, range(4))
    for i in range(4):
        world.client(i).submit(rnd, np.full(4, float(i)), 1.0)
    assert world.owner.round(rnd)["threshold"] == 3
    assert world.client(0).unmask(rnd) is False  # signed; 1 of t = 3 signatures
    assert world.client(1).unmask(rnd) is False
    assert world.owner.round(rnd)["unmasked"] == []  # nobody revealed anything yet
    assert world.client(2).unmask(rnd) is True  # the third signature: reveals
    assert world.client(0).unmask(rnd) is True and world.client(1).unmask(rnd) is True
    assert world.client(3).unmask(rnd) is True
    assert world.owner.round(rnd)["status"] == "aggregated"
    assert np.allclose(world.client(3).aggregate(rnd), 1.5, atol=1e-6)
