"""The secure-aggregation state machine as a hostile client meets it: every stage's message is
typed and checked on arrival; wrong stage, duplicates, bad signatures, unknown peers, wrong
sizes and garbage get a 4xx in the contract's JSON shape and store nothing. Identity keys are
registered once; the SDK pins the roster (TOFU). Round state at rest is Fernet ciphertext."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

import privacy_secagg as secagg
from privacy_api.storage.models import Round, RoundParticipant, RoundShare
from privacy_client import FederatedClient
from privacy_client.federated import IdentityChanged, RoundFailed, UnmaskRefused
from tests.federated.support import BASE, World, weighted_mean


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _counts(world: World) -> tuple[int, int]:
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        return (s.scalar(select(func.count()).select_from(RoundParticipant)) or 0,
                s.scalar(select(func.count()).select_from(RoundShare)) or 0)


def _error_shape(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.get_json())
    body: dict[str, Any] = resp.get_json()
    assert set(body) == {"code", "message", "details"}, body
    return body


class Identity:
    """A client driven by hand: its identity key and round keys, as the SDK would make them."""

    def __init__(self, world: World, i: int, fed: int) -> None:
        self.user_id, self.key = world.clients[i]
        self.http = world.api.as_(self.key)
        self.identity = secagg.IdentityKey.generate()
        self.secrets = secagg.RoundSecrets.generate()
        self.fed = fed
        resp = self.http.post(f"/v1/federations/{fed}/identity",
                              json={"identity_key": b64(self.identity.public_bytes())})
        assert resp.status_code == 200, resp.get_json()

    def advert(self, rnd: int, *, signer: secagg.IdentityKey | None = None) -> dict[str, str]:
        message = secagg.advertisement_message(secagg.round_binding(self.fed, rnd), self.user_id,
                                               self.secrets.c_public, self.secrets.s_public)
        return {"c_public": b64(self.secrets.c_public), "s_public": b64(self.secrets.s_public),
                "signature": b64((signer or self.identity).sign(message))}


@pytest.fixture
def three(world: World) -> tuple[int, list[Identity]]:
    fed = world.federation(vector_length=4, min_clients=3)
    return fed, [Identity(world, i, fed) for i in range(3)]


def test_advertise_stage_checks_every_message(world: World, three: tuple[int, list[Identity]]) -> None:
    fed, (a, b, c) = three
    rnd = world.owner.open_round(fed)["id"]
    good = a.advert(rnd)
    cases = [
        ({**good, "signature": b64(b"\0" * 64)}, 400),  # does not verify
        (a.advert(rnd, signer=b.identity), 400),  # signed by another client's key
        ({**good, "signature": b64(b"\0" * 63)}, 422),  # wrong size
        ({**good, "c_public": b64(b"\1" * 31)}, 422),
        ({**good, "s_public": "not base64!"}, 422),
        ({**good, "extra": 1}, 422),
        ({"c_public": good["c_public"]}, 422),
        ([1, 2, 3], 422),
    ]
    for body, status in cases:
        resp = a.http.post(f"/v1/rounds/{rnd}/keys", json=body)
        _error_shape(resp, status)
    garbage = a.http.request("POST", f"/v1/rounds/{rnd}/keys", data=b"\xff\x00garbage",
                             headers={"Content-Type": "application/json"})
    assert 400 <= garbage.status_code < 500 and set(garbage.get_json()) == {"code", "message", "details"}
    assert _counts(world) == (0, 0)  # nothing stored

    assert a.http.post(f"/v1/rounds/{rnd}/keys", json=good).status_code == 201
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/keys", json=good), 409)  # duplicate
    # messages of later stages are refused in this one
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/shares", json={"shares": [
        {"recipient_id": a.user_id, "share": b64(b"\0" * secagg.SHARE_BLOB_BYTES)}]}), 409)
    _error_shape(a.http.get(f"/v1/rounds/{rnd}/keys"), 409)  # keys not fixed yet
    _error_shape(a.http.get(f"/v1/rounds/{rnd}/shares"), 409)
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/unmask",
                             json={"self_seed_shares": [], "s_key_shares": []}), 409)
    assert world.post_update(a.key, rnd, world.encrypt(np.zeros(4))).status_code == 409
    assert _counts(world) == (1, 0)


def test_identity_key_is_registered_once(world: World, three: tuple[int, list[Identity]]) -> None:
    fed, (a, _, _) = three
    same = a.http.post(f"/v1/federations/{fed}/identity",
                       json={"identity_key": b64(a.identity.public_bytes())})
    assert same.status_code == 200 and same.get_json()["fingerprint"] == secagg.fingerprint(
        a.identity.public_bytes())
    other = secagg.IdentityKey.generate().public_bytes()
    _error_shape(a.http.post(f"/v1/federations/{fed}/identity", json={"identity_key": b64(other)}), 409)
    _error_shape(a.http.post(f"/v1/federations/{fed}/identity",
                             json={"identity_key": b64(b"\0" * 31)}), 422)
    _error_shape(world.api.as_(world.owner_key).post(
        f"/v1/federations/{fed}/identity", json={"identity_key": b64(other)}), 403)
    roster = a.http.get(f"/v1/federations/{fed}/roster").get_json()
    assert [e["client_id"] for e in roster] == [u for u, _ in world.clients]
    assert roster[0]["identity_key"] == b64(a.identity.public_bytes())


def _advertise_all(world: World, rnd: int, people: list[Identity]) -> None:
    for person in people:
        assert person.http.post(f"/v1/rounds/{rnd}/keys", json=person.advert(rnd)).status_code == 201
    assert world.owner.round(rnd)["stage"] == "share"


def test_share_stage_checks_every_message(world: World, three: tuple[int, list[Identity]]) -> None:
    fed, people = three
    a = people[0]
    rnd = world.owner.open_round(fed)["id"]
    _advertise_all(world, rnd, people)
    keys = a.http.get(f"/v1/rounds/{rnd}/keys").get_json()
    assert keys["threshold"] == 2 and len(keys["keys"]) == 3
    blob = b64(b"\0" * secagg.SHARE_BLOB_BYTES)
    everyone = [{"recipient_id": p.user_id, "share": blob} for p in people]
    cases = [
        (everyone[:2], "missing"),  # one participant without a share
        ([*everyone, {"recipient_id": world.outsider[0], "share": blob}], "unknown"),
        ([*everyone[:2], {"recipient_id": 999_999, "share": blob}], "unknown"),
        ([*everyone[:2], {"recipient_id": people[2].user_id, "share": b64(b"\0" * 10)}], "size"),
        ([*everyone, everyone[0]], "appears twice"),
        ([], "shares"),
    ]
    for shares, why in cases:
        body = _error_shape(a.http.post(f"/v1/rounds/{rnd}/shares", json={"shares": shares}), 422)
        assert why in json.dumps(body), (why, body)
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/shares", json={"shares": "x"}), 422)
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/keys", json=a.advert(rnd)), 409)  # stage over
    assert _counts(world) == (3, 0)
    assert a.http.post(f"/v1/rounds/{rnd}/shares", json={"shares": everyone}).status_code == 202
    _error_shape(a.http.post(f"/v1/rounds/{rnd}/shares", json={"shares": everyone}), 409)
    assert _counts(world) == (3, 3)
    # a client that did not advertise takes no part
    outsider_round = world.owner.open_round(fed)["id"]
    for person in people[:2]:
        person.http.post(f"/v1/rounds/{outsider_round}/keys", json=person.advert(outsider_round))
    world.owner.close_round(outsider_round)
    late = people[2].http.post(f"/v1/rounds/{outsider_round}/shares", json={"shares": everyone})
    assert late.status_code in (409,)


def test_unmask_stage_checks_every_message(world: World) -> None:
    fed = world.federation(vector_length=3, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    for i in range(3):
        world.client(i).submit(rnd, [1.0, 2.0, 3.0], 1.0)
    state = world.owner.round(rnd)
    assert state["stage"] == "unmask" and state["dropped"] == []
    ids = [u for u, _ in world.clients]
    http = world.api.as_(world.clients[0][1])
    share = b64(b"\0" * 32)
    all_seeds = [{"client_id": u, "share": share} for u in ids]
    cases = [
        {"self_seed_shares": all_seeds[:2], "s_key_shares": []},  # a survivor missing
        {"self_seed_shares": all_seeds, "s_key_shares": [all_seeds[0]]},  # both kinds, one client
        {"self_seed_shares": [*all_seeds, {"client_id": 999, "share": share}], "s_key_shares": []},
        {"self_seed_shares": [*all_seeds[:2], {"client_id": ids[2], "share": b64(b"1")}],
         "s_key_shares": []},
        {"self_seed_shares": [*all_seeds, all_seeds[0]], "s_key_shares": []},
        {"self_seed_shares": all_seeds},
    ]
    for body in cases:
        resp = http.post(f"/v1/rounds/{rnd}/unmask", json=body)
        assert resp.status_code in (409, 422), (body, resp.get_json())
        assert set(resp.get_json()) == {"code", "message", "details"}
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(RoundParticipant)
                        .where(RoundParticipant.unmask_token.is_not(None))) == 0
    world.finish(rnd, range(3))
    assert np.allclose(world.client(2).aggregate(rnd), [1.0, 2.0, 3.0], atol=1e-6)


def test_sdk_pins_the_roster_and_refuses_a_changed_key(world: World, tmp_path: Path) -> None:
    fed = world.federation(vector_length=2, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    pinned = world.client(0).roster_fingerprints(fed)
    assert pinned == {u: secagg.fingerprint(k) for u, k in _roster(world, fed).items()}
    assert pinned[world.clients[0][0]] == world.client(0).identity_fingerprint()
    state_file = world.state_root / f"client-{world.clients[0][0]}" / f"roster-{fed}.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    # The server swaps client 1's registered key (a database edit): client 0 refuses.
    swapped = secagg.IdentityKey.generate().public_bytes()
    from privacy_api.storage.models import Enrollment

    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        row = s.scalars(select(Enrollment).where(Enrollment.user_id == world.clients[1][0])).one()
        row.identity_key = swapped
    with pytest.raises(IdentityChanged) as refused:
        world.client(0).roster_fingerprints(fed)
    assert refused.value.code == "identity_changed"
    # A fresh SDK with no pins (same identity key) trusts the new key on first use: TOFU's
    # stated limit.
    me = f"client-{world.clients[0][0]}"
    (tmp_path / "elsewhere" / me).mkdir(parents=True)
    (tmp_path / "elsewhere" / me / "identity.json").write_bytes(
        (world.state_root / me / "identity.json").read_bytes())
    fresh = FederatedClient(BASE, world.clients[0][1], world.keys.secret, transport=world.transport,
                            state_dir=tmp_path / "elsewhere")
    with fresh:
        assert fresh.roster_fingerprints(fed)[world.clients[1][0]] == secagg.fingerprint(swapped)


def _roster(world: World, fed: int) -> dict[int, bytes]:
    entries = world.api.as_(world.owner_key).get(f"/v1/federations/{fed}/roster").get_json()
    return {e["client_id"]: base64.b64decode(e["identity_key"]) for e in entries}


def test_round_state_at_rest_is_fernet_ciphertext(world: World, db_url: str) -> None:
    fed = world.federation(vector_length=3000, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    updates = np.random.default_rng(2).uniform(-1, 1, (3, 3000))
    for i in range(2):
        world.client(i).submit(rnd, updates[i], 1.0)
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        stored = s.scalar(select(Round.running_sum).where(Round.id == rnd))
        shares = list(s.scalars(select(RoundShare.token)))
    assert stored is not None and bytes(stored).startswith(b"gAAAAA")  # a Fernet token
    assert b"PAHE" not in bytes(stored) and all(bytes(t).startswith(b"gAAAAA") for t in shares)
    if db_url.startswith("sqlite"):
        # Neither the database file nor its WAL holds a serialized (unencrypted) running sum.
        world.api.app.extensions["privacy_api"].db.dispose()
        path = Path(db_url.removeprefix("sqlite:///"))
        for file in path.parent.glob(path.name + "*"):
            assert b"PAHE" not in file.read_bytes(), file
    world.client(2).submit(rnd, updates[2], 1.0)
    world.finish(rnd, range(3))
    mean = world.client(0).aggregate(rnd)
    assert np.max(np.abs(mean - weighted_mean(updates, np.ones(3)))) <= 1e-6


def test_participate_runs_a_whole_round_in_threads(world: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fed = world.federation(vector_length=6, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    updates = np.arange(18, dtype=np.float64).reshape(3, 6) / 7
    weights = np.array([1.0, 2.0, 0.5])

    def run(i: int) -> np.ndarray:
        return world.client(i).participate(rnd, updates[i], float(weights[i]), timeout=120,
                                           poll=0.05)

    with ThreadPoolExecutor(3) as pool:
        means = list(pool.map(run, range(3)))
    for mean in means:
        assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


def test_sdk_enforces_the_floors_itself(world: World) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        world.owner.create_federation("two", world.keys.public, vector_length=2, min_clients=2)
    # A server that announces a threshold below the floors is refused before any share leaves.
    fed = world.federation(vector_length=2, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    for i in range(3):
        world.client(i).advertise(rnd)

    class LowThreshold(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = self.inner.handle_request(request)
            if request.method == "GET" and request.url.path.endswith("/keys"):
                response.read()
                return httpx.Response(200, json={**response.json(), "threshold": 1})
            return response

    lying = FederatedClient(BASE, world.clients[0][1], world.keys.secret,
                            transport=LowThreshold(world.transport), state_dir=world.state_root)
    with lying, pytest.raises(UnmaskRefused, match="threshold"):
        lying.share(rnd)
    assert _counts(world)[1] == 0  # no share was posted


def test_participate_says_when_a_client_missed_a_stage(world: World) -> None:
    fed = world.federation(vector_length=2, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.client(0).advertise(rnd)
    world.client(1).advertise(rnd)
    world.owner.close_round(rnd)  # fails: 2 of 3 advertised
    with pytest.raises(RoundFailed, match="failed"):
        world.client(2).participate(rnd, [1.0, 2.0], 1.0, timeout=5)
    extra_id, extra_key = world.api.user("late-comer", "client")
    world.owner.enroll(fed, extra_id)
    late = world.owner.open_round(fed)["id"]
    world.prepare(late, range(3))  # the fourth enrolled client never advertised
    assert world.owner.round(late)["stage"] == "collect"
    with pytest.raises(RoundFailed, match="advertise"):
        world.sdk(extra_key, world.keys.secret).participate(late, [1.0, 2.0], 1.0, timeout=5)
