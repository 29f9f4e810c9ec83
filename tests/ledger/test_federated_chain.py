"""A DP federation's rounds form their own chain, anchored in the federation row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import update

from privacy_api.storage.models import Federation
from privacy_client import generate_keys
from tests.federated.support import Keys, World
from tests.ledger.conftest import verify_cli


@pytest.fixture(scope="module")
def keys() -> Keys:
    secret, public = generate_keys("n8192")
    return Keys(secret, public, secret, public)


@pytest.fixture
def world(api, keys: Keys) -> Iterator[World]:
    w = World.build(api, keys, clients=3)
    yield w
    w.close()


def test_rounds_are_chained_and_verified(world: World, db_url: str):
    fed = world.federation(vector_length=2, dp={"clip_norm": 1.0, "noise_multiplier": 5.0},
                           epsilon_cap=10.0, delta=1e-5)
    for _ in range(3):
        world.owner.open_round(fed)
    result = verify_cli(db_url, "--heads")
    assert result.exit_code == 0, result.output
    assert f"federation/{fed} 3 " in result.stdout
    engine = world.api.app.extensions["privacy_api"].db.engine
    with engine.begin() as conn:
        conn.execute(update(Federation).where(Federation.id == fed)
                     .values(epsilon_spent=Federation.epsilon_spent - 1))
    result = verify_cli(db_url)
    assert result.exit_code == 1
    assert f"federation/{fed}: spent (epsilon, delta)" in result.output
