"""Concurrent uploads to a real multi-process gunicorn server: the round lock loses none."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from privacy_client import FederatedClient
from tests.conftest import make_app
from tests.federated.support import Keys
from tests.helpers import Api
from tests.server import gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

CLIENTS = 10
LENGTH = 12_000  # three ciphertexts per update: each fold takes long enough to race


def test_concurrent_uploads_all_land(db_url: str, keys: Keys, tmp_path: Path) -> None:
    state_dir = tmp_path / "sdk-state"
    app = make_app(db_url)
    api = Api(app)
    _, owner_key = api.user("owner", "owner")
    clients = [api.user(f"c{i}", "client") for i in range(CLIENTS)]
    rng = np.random.default_rng(5)
    updates = rng.uniform(-2, 2, (CLIENTS, LENGTH))
    weights = rng.uniform(0.5, 20, CLIENTS)

    with gunicorn(db_url, workers=2, threads=4) as server, \
            FederatedClient(server.url, owner_key, None) as owner:
        fed = owner.create_federation("race", keys.public, vector_length=LENGTH, min_clients=CLIENTS)
        for user_id, _ in clients:
            owner.enroll(fed["id"], user_id)
        rnd = owner.open_round(fed["id"])["id"]
        barrier = threading.Barrier(CLIENTS)

        def participate(i: int) -> tuple[FederatedClient, np.ndarray]:
            # One call per client does the whole round; every stage's posts race each other.
            client = FederatedClient(server.url, clients[i][1], keys.secret, state_dir=state_dir)
            client.federation(fed["id"])  # warm up outside the race
            barrier.wait()
            return client, client.participate(rnd, updates[i], float(weights[i]), timeout=300,
                                              poll=0.1)

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(participate, range(CLIENTS)))
        closed = owner.round(rnd)
        mean = results[0][1]
        receipts = [client.receipt(rnd) for client, _ in results]
        for client, other in results:
            assert np.array_equal(other, mean)
            client.close()

    assert closed["status"] == "aggregated" and closed["received"] == CLIENTS
    assert sorted(c["receipt"] for c in closed["contributors"]) == sorted(receipts)
    expected = (weights[:, None] * updates).sum(axis=0) / weights.sum()
    assert np.max(np.abs(mean - expected)) <= 1e-6
    app.extensions["privacy_api"].db.dispose()
