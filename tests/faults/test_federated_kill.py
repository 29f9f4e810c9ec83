"""SIGKILLed workers during encrypted update uploads: no accepted update is lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from privacy_client import FederatedClient, PrivacyApiError, TransportError, decrypt_aggregate
from tests.conftest import make_app
from tests.helpers import Api
from tests.server import gunicorn, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("servers")]

CLIENTS = 12
LENGTH = 9000


@pytest.fixture(scope="module")
def keys():
    from privacy_client import generate_keys

    return generate_keys("n8192")


def test_worker_kills_during_uploads_lose_no_accepted_update(db_url, keys, tmp_path):
    state_dir = tmp_path / "sdk-state"
    secret, public = keys
    app = make_app(db_url)
    api = Api(app)
    _, owner_key = api.user("owner", "owner")
    clients = [api.user(f"c{i}", "client") for i in range(CLIENTS)]
    rng = np.random.default_rng(11)
    updates = rng.uniform(-1, 1, (CLIENTS, LENGTH))
    weights = rng.uniform(1, 10, CLIENTS)
    accepted_first_try: list[int] = []
    retried_after_loss: list[int] = []

    with gunicorn(db_url, workers=2, threads=4) as server, \
            FederatedClient(server.url, owner_key, None) as owner:
        fed = owner.create_federation("faults", public, vector_length=LENGTH, min_clients=CLIENTS)
        for user_id, _ in clients:
            owner.enroll(fed["id"], user_id)
        rnd = owner.open_round(fed["id"])["id"]
        sdks = [FederatedClient(server.url, key, secret, timeout=20, state_dir=state_dir)
                for _, key in clients]
        for client in sdks:  # key agreement first, undisturbed; the kills hit the uploads
            client.advertise(rnd)
        for client in sdks:
            client.share(rnd)
        stop = threading.Event()

        kills = [0]

        def killer() -> None:
            # a handful of kills spread over the upload phase; a worker needs a moment to boot
            pick = random.Random(3)
            while kills[0] < 5 and not stop.wait(pick.uniform(0.3, 1.0)):
                pids = server.worker_pids()
                if pids:
                    os.kill(pick.choice(pids), signal.SIGKILL)
                    kills[0] += 1

        def submit(i: int) -> None:
            with FederatedClient(server.url, clients[i][1], secret, timeout=20,
                                 state_dir=state_dir) as client:
                for attempt in range(30):
                    try:
                        # an earlier attempt accepted but whose answer died with the worker
                        # comes back as 409 naming a receipt the SDK sent: it resumes from it
                        client.submit(rnd, updates[i], float(weights[i]))
                        (accepted_first_try if attempt == 0 else retried_after_loss).append(i)
                        return
                    except (TransportError, PrivacyApiError) as exc:
                        if isinstance(exc, PrivacyApiError) and exc.status and exc.status < 500:
                            raise
                        time.sleep(0.5)
                raise AssertionError(f"client {i} never got through")

        k = threading.Thread(target=killer)
        k.start()
        try:
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(submit, range(CLIENTS)))
        finally:
            stop.set()
            k.join()
        wait_ready(server.url)
        for client in [*sdks, *sdks]:  # sign the survivor set first, reveal once t signed
            client.unmask(rnd)
        closed = owner.round(rnd)
        raw = owner._request("GET", f"/v1/rounds/{rnd}/aggregate").content
        mean_seen = sdks[0].aggregate(rnd)  # receipts, contributor count and check slot
        for client in sdks:
            client.close()

    assert kills[0] >= 1
    assert closed["status"] == "aggregated"
    assert closed["received"] == CLIENTS  # every client is in exactly once
    assert len({c["client_id"] for c in closed["contributors"]}) == CLIENTS
    mean = decrypt_aggregate(secret, raw, LENGTH)
    assert np.array_equal(mean, mean_seen)
    expected = (weights[:, None] * updates).sum(axis=0) / weights.sum()
    assert np.max(np.abs(mean - expected)) <= 1e-6
    # the kills really happened mid-upload for some clients (they had to retry)
    assert len(accepted_first_try) + len(retried_after_loss) == CLIENTS
    app.extensions["privacy_api"].db.dispose()
