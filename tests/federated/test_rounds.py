"""Rounds end to end through the SDK and the real app: weighted means, one update per client,
enrolment, min_clients, deadlines, restarts and the SDK's own checks."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from privacy_api.storage.models import Round
from privacy_client import Conflict, ContributionMissing, FederatedClient, NotFound, ReceiptMismatch
from tests.conftest import make_app
from tests.federated.support import BASE, World, weighted_mean
from tests.helpers import Api


def _rounds(api: Api) -> list[Round]:
    with api.app.extensions["privacy_api"].db.transaction() as s:
        return list(s.scalars(select(Round).order_by(Round.id)))


def test_aggregate_of_one_parameter_is_the_weighted_mean(world: World) -> None:
    fed = world.federation(vector_length=1, min_clients=3)
    updates = np.array([[0.75], [-3.5], [12.0625]])
    weights = np.array([1.0, 250.0, 0.01])
    rnd = world.run_round(fed, updates, weights)
    clients = world.clients_of(range(3))
    receipts = [c.receipt(rnd) for c in clients]

    closed = world.owner.round(rnd)

    assert closed["status"] == "aggregated" and closed["stage"] == "released"
    assert closed["received"] == 3 and closed["threshold"] == 2
    assert sorted(c["receipt"] for c in closed["contributors"]) == sorted(receipts)
    assert sorted(c["client_id"] for c in closed["contributors"]) == [u for u, _ in world.clients]
    for client in clients:
        mean = client.aggregate(rnd)
        assert mean.shape == (1,)
        assert abs(mean[0] - weighted_mean(updates, weights)[0]) <= 1e-6


def test_aggregate_of_300k_parameters(world: World) -> None:
    length = 300_000
    fed = world.federation(vector_length=length, min_clients=3)
    rng = np.random.default_rng(3)
    updates = rng.uniform(-1, 1, (3, length))
    weights = np.array([600.0, 37.5, 2.0])
    rnd = world.run_round(fed, updates, weights)

    mean = world.client(0).aggregate(rnd)

    assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


def test_one_update_per_client_per_round(world: World) -> None:
    fed = world.federation(vector_length=4)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    first = world.client(0).submit(rnd, np.ones(4), 1.0)

    second = world.post_update(world.clients[0][1], rnd, world.encrypt(np.zeros(4)))

    assert second.status_code == 409 and second.get_json()["details"]["receipt"] == first
    assert world.client(0).submit(rnd, np.zeros(4), 1.0) == first  # the SDK resumes, sends nothing
    assert world.owner.round(rnd)["received"] == 1


def test_unenrolled_client_is_refused_and_sees_nothing(world: World) -> None:
    fed = world.federation(vector_length=2)
    rnd = world.owner.open_round(fed)["id"]
    outsider_id, outsider_key = world.outsider

    refused = world.post_update(outsider_key, rnd, world.encrypt([1.0, 2.0]))

    assert refused.status_code == 403 and refused.get_json()["code"] == "forbidden"
    outsider = world.sdk(outsider_key, world.keys.secret)
    with pytest.raises(NotFound):  # the SDK looks the round up first: invisible to outsiders
        outsider.advertise(rnd)
    as_outsider = world.api.as_(outsider_key)
    assert as_outsider.get(f"/v1/rounds/{rnd}").status_code == 404
    assert as_outsider.get(f"/v1/rounds/{rnd}/keys").status_code == 404
    assert as_outsider.get(f"/v1/rounds/{rnd}/shares").status_code == 404
    assert as_outsider.get(f"/v1/federations/{fed}").status_code == 404
    assert as_outsider.get(f"/v1/federations/{fed}/roster").status_code == 404
    assert as_outsider.get("/v1/federations").get_json() == []
    assert world.owner.round(rnd)["received"] == 0


def test_round_below_min_clients_fails_and_releases_nothing(world: World) -> None:
    fed = world.federation(vector_length=3, min_clients=3)
    few = world.owner.open_round(fed)["id"]
    for i in range(2):
        world.client(i).advertise(few)
    failed = world.owner.close_round(few)
    assert failed["status"] == "failed" and "2 of 3 required clients advertised" in failed["failure_reason"]

    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    for i in range(2):
        world.client(i).submit(rnd, [1.0, 2.0, 3.0], 1.0)
    with pytest.raises(Conflict):
        world.client(0).aggregate(rnd)  # still collecting: nothing yet
    closed = world.owner.close_round(rnd)

    assert closed["status"] == "failed" and closed["received"] == 2
    assert "2 of 3" in closed["failure_reason"]
    resp = world.api.as_(world.owner_key).get(f"/v1/rounds/{rnd}/aggregate")
    assert resp.status_code == 409 and resp.get_json()["code"] == "conflict"
    assert _rounds(world.api)[1].running_sum is None  # the partial sum is discarded
    late = world.post_update(world.clients[2][1], rnd, world.encrypt([1.0, 2.0, 3.0]))
    assert late.status_code == 409
    assert world.owner.close_round(rnd)["status"] == "failed"  # closing again changes nothing


def test_deadline_closes_the_round_lazily(world: World) -> None:
    fed = world.federation(vector_length=2, min_clients=3)
    # generous per-stage deadlines: a loaded CI machine must get each stage's posts in first
    short = world.owner.open_round(fed, deadline_seconds=6)["id"]
    enough = world.owner.open_round(fed, deadline_seconds=6)["id"]
    world.prepare(short, range(3))
    world.prepare(enough, range(3))
    world.client(0).submit(short, [1.0, 1.0], 1.0)
    for i, (x, w) in enumerate([([1.0, 3.0], 1.0), ([3.0, 1.0], 3.0), ([0.0, 0.0], 4.0)]):
        world.client(i).submit(enough, x, w)
    assert world.owner.round(enough)["stage"] == "unmask"
    assert sorted(world.owner.federation(fed)["open_rounds"]) == [short, enough]
    # client 2 never answers: the deadline ends the stage. Client 0 signs first and reveals
    # once client 1's signature makes t = 2 (consistency check), hence the second call.
    for i in (0, 1, 0):
        world.client(i).unmask(enough)
    time.sleep(6.1)

    late = world.post_update(world.clients[1][1], short, world.encrypt([1.0, 1.0]))
    assert late.status_code == 409
    assert world.owner.federation(fed)["open_rounds"] == []
    # read after the deadline: closed the same way as by the owner, and persisted
    assert world.client(1).round(short)["status"] == "failed"
    released = world.client(1).round(enough)
    assert released["status"] == "aggregated" and released["unmasked"] == sorted(
        u for u, _ in world.clients[:2])
    stored = {r.id: r for r in _rounds(world.api)}
    assert stored[short].status == "failed" and stored[short].running_sum is None
    assert stored[enough].closed_at is not None
    assert np.allclose(world.client(1).aggregate(enough), [1.25, 0.75], atol=1e-6)


def test_restart_mid_round_loses_no_accepted_update(api: Api, world: World, db_url: str) -> None:
    fed = world.federation(vector_length=5, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    updates = np.arange(15, dtype=np.float64).reshape(3, 5) - 7
    weights = np.array([2.0, 1.0, 5.0])
    for i in range(2):
        world.client(i).submit(rnd, updates[i], float(weights[i]))
    world.close()
    api.app.extensions["privacy_api"].db.dispose()  # the first instance goes away

    app2 = make_app(db_url)
    try:
        transport = httpx.WSGITransport(app=app2)
        # New SDK objects too: each resumes from its local round state.
        clients = [FederatedClient(BASE, key, world.keys.secret, transport=transport,
                                   state_dir=world.state_root) for _, key in world.clients]
        with FederatedClient(BASE, world.owner_key, None, transport=transport) as owner:
            clients[2].submit(rnd, updates[2], float(weights[2]))
            assert owner.round(rnd)["received"] == 3
            for client in [*clients, *clients]:  # sign first, reveal once t signed
                client.unmask(rnd)
            mean = clients[2].aggregate(rnd)
        for client in clients:
            client.close()
    finally:
        app2.extensions["privacy_api"].db.dispose()
    assert np.max(np.abs(mean - weighted_mean(updates, weights))) <= 1e-6


class _TamperReceipts(httpx.BaseTransport):
    """A man in the middle that rewrites receipts: the SDK must notice."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/updates") and response.status_code == 202:
            response.read()
            return httpx.Response(202, json={"receipt": "0" * 64})
        return response


def test_sdk_checks_receipts_and_its_own_contribution(world: World) -> None:
    fed = world.federation(vector_length=2, min_clients=3)
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(3))
    tampered = FederatedClient(BASE, world.clients[0][1], world.keys.secret,
                               transport=_TamperReceipts(world.transport), state_dir=world.state_root)
    with tampered, pytest.raises(ReceiptMismatch) as mismatch:
        tampered.submit(rnd, [1.0, 2.0], 1.0)
    assert mismatch.value.code == "receipt_mismatch" and mismatch.value.status == 202
    world.client(1).submit(rnd, [3.0, 4.0], 1.0)
    world.client(2).submit(rnd, [5.0, 6.0], 1.0)
    world.finish(rnd, [1, 2])  # client 0 holds no receipt: it does not unmask

    unsure = world.sdk(world.clients[0][1], world.keys.secret)  # no receipt of its own
    with pytest.raises(ContributionMissing) as missing:
        unsure.aggregate(rnd)
    assert missing.value.code == "contribution_missing"
    assert np.allclose(unsure.aggregate(rnd, verify=False), [3.0, 4.0], atol=1e-6)
    again = world.owner.open_round(fed)["id"]
    world.prepare(again, range(3))
    with pytest.raises(ValueError, match="shape"):
        world.client(1).submit(again, [1.0, 2.0, 3.0], 1.0)
