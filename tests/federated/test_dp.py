"""Distributed DP: each round is charged to the federation's budget when it opens, composed by
the accountant, refused over the cap with nothing charged; the SDK clips and adds the noise."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import func, select

from mechanisms.accounting import total_spent
from mechanisms.noise import calibrate_gaussian_sigma
from privacy_api.domain.units import delta_units, eps_units, eps_value
from privacy_api.services.federated import round_event
from privacy_api.storage.models import Federation, LedgerEntry, Round
from privacy_client import BudgetExhausted
from tests.federated.support import World

DP = {"clip_norm": 2.0, "noise_multiplier": 1.1}
DELTA = Decimal("1e-5")


def _ledger(world: World) -> tuple[list[LedgerEntry], Federation]:
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        entries = list(s.scalars(select(LedgerEntry).order_by(LedgerEntry.created_at)))
        return entries, s.scalars(select(Federation)).one()


def test_one_round_costs_the_analytic_gaussian_epsilon() -> None:
    event = round_event(1.1, delta_units(DELTA))
    assert event.noise_multiplier == 1.1 and event.delta == DELTA
    # noise multiplier 1.1 at delta 1e-5: analytic Gaussian epsilon ~3.92 (RDP alone: ~4.9)
    assert Decimal("3.9") < event.epsilon < Decimal("3.95")
    assert calibrate_gaussian_sigma(event.epsilon, DELTA, 1.0) <= 1.1


def test_rounds_are_charged_when_opened_and_refused_over_the_cap(world: World) -> None:
    fed = world.federation(vector_length=3, dp=DP, epsilon_cap=10.0, delta=float(DELTA))
    owner = world.owner
    opened = [owner.open_round(fed) for _ in range(4)]

    with pytest.raises(BudgetExhausted) as refused:
        owner.open_round(fed)

    assert refused.value.status == 403 and refused.value.code == "budget_exhausted"
    entries, federation = _ledger(world)
    assert len(entries) == 4 and len(opened) == 4
    event = round_event(1.1, delta_units(DELTA))
    for k, (entry, rnd) in enumerate(zip(entries, opened, strict=True), start=1):
        assert entry.federation_id == fed and entry.round_id == rnd["id"]
        assert entry.dataset_id is None and entry.user_id == world.owner_id
        assert entry.aggregate == "federated_round" and entry.mechanism == "gaussian"
        assert entry.plan == {"federation": fed, "round": rnd["id"]}
        assert entry.privacy_events == [[str(event.epsilon), str(event.delta), 1.1, 1]]
        # what each round adds is the RDP composition of k rounds minus that of k - 1
        expected = total_spent([event] * k, delta_budget=DELTA)
        assert sum(e.epsilon_charged for e in entries[:k]) == eps_units(expected.epsilon)
        assert rnd["epsilon_charged"] == pytest.approx(float(eps_value(entry.epsilon_charged)))
    assert federation.epsilon_spent == sum(e.epsilon_charged for e in entries)
    assert federation.epsilon_spent <= eps_units(10) < federation.epsilon_spent + entries[-1].epsilon_charged
    assert federation.delta_spent == delta_units(DELTA)
    seen = owner.federation(fed)
    assert seen["epsilon_spent"] == pytest.approx(float(eps_value(federation.epsilon_spent)))
    with world.api.app.extensions["privacy_api"].db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Round)) == 4  # the refused one: no round


def test_composition_is_far_below_the_sum_of_rounds(world: World) -> None:
    fed = world.federation(vector_length=1, dp={"clip_norm": 1.0, "noise_multiplier": 5.0},
                           epsilon_cap=3.0, delta=1e-6)
    n = 0
    while True:
        try:
            world.owner.open_round(fed)
        except BudgetExhausted:
            break
        n += 1
    one = round_event(5.0, delta_units(Decimal("1e-6"))).epsilon
    assert n > 2 * int(Decimal(3) / one)  # basic composition would allow only 3 / one rounds


def _noisy_round(world: World, fed: int, x: np.ndarray, clients: int) -> np.ndarray:
    rnd = world.owner.open_round(fed)["id"]
    world.prepare(rnd, range(clients))
    for i in range(clients):
        world.client(i).submit(rnd, x, 1.0, rng=np.random.default_rng(i))
    world.finish(rnd, range(clients))
    sums = world.client(0).aggregate_sums(rnd)
    clipped = np.append(x, 1.0) / np.linalg.norm(np.append(x, 1.0)) * clients
    residual: np.ndarray = np.append(sums.weighted_sum, sums.total_weight) - clipped
    return residual


def test_sdk_clips_and_adds_the_noise_the_federation_asks_for(world: World) -> None:
    length, clients = 4000, 3
    fed = world.federation(vector_length=length, min_clients=clients,
                           dp={"clip_norm": 1.0, "noise_multiplier": 2.0}, epsilon_cap=5.0, delta=1e-5)
    x = np.full(length, 0.05)  # |[w*x, w]| = sqrt(10 + 1) > 1: every client is clipped to 1
    residual = _noisy_round(world, fed, x, clients)
    assert np.std(residual) == pytest.approx(2.0, rel=0.05)  # sigma * C on the sum
    assert abs(np.mean(residual)) < 0.1


def test_noise_skippers_are_covered_by_each_clients_share(world: World) -> None:
    # k = 1: each client adds sigma*C/sqrt(min_clients - 1), so with one of the three skipping
    # (or revealing) its noise, the other two still give the sum sigma*C; the charge is the
    # epsilon of sigma, as without skippers.
    length, clients, sigma = 4000, 3, 2.0
    fed = world.federation(vector_length=length, min_clients=clients,
                           dp={"clip_norm": 1.0, "noise_multiplier": sigma, "noise_skippers": 1},
                           epsilon_cap=5.0, delta=1e-5)
    assert world.owner.federation(fed)["dp"]["noise_skippers"] == 1
    residual = _noisy_round(world, fed, np.full(length, 0.05), clients)
    per_client = sigma / np.sqrt(clients - 1)
    assert np.std(residual) == pytest.approx(per_client * np.sqrt(clients), rel=0.05)
    assert per_client * np.sqrt(clients - 1) == pytest.approx(sigma)  # two honest: sigma * C
    entries, _ = _ledger(world)
    assert entries[-1].privacy_events == [[str(round_event(sigma, delta_units(Decimal("1e-5"))).epsilon),
                                           "0.00001", sigma, 1]]
