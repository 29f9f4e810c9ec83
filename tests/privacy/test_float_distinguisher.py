"""The floating-point attack (Mironov, CCS 2012), run as a hostile analyst over the API.

Bounds [0, 1]; a sum filtered to one person. With continuous float noise, when Alice is in the
data the true sum is 1.0 and every output in [-1, 0.5] is a multiple of 2^-53 (Sterbenz); when
she is absent most are not, so one answer can tell whether she is there. The service releases
only multiples of a public grid that does not depend on the data, so every output is reachable
from both neighbours: the distinguisher below finds nothing, for every real-valued aggregate,
both mechanisms, and grouped answers. ``test_the_distinguisher_has_power`` shows the same check
catching continuous Laplace and Gaussian noise (diffprivlib's), so its silence means something.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from diffprivlib.mechanisms import Gaussian, Laplace

from tests.privacy.conftest import World

ALICE_ONLY = [{"column": "name", "op": "==", "value": "alice"}]
REAL_AGGREGATES = ["sum", "mean", "variance", "std"]
MECHANISMS = {"laplace": {}, "gaussian": {"mechanism": "gaussian", "delta": 1e-9}}
RELEASES = 12  # per world and case; the structural check holds for every single answer


def impossible_with_alice(value: float) -> bool:
    """The issue's distinguisher: an output in [-1, 0.5] that is not a multiple of 2^-53
    cannot be 1.0 + float noise."""
    return -1.0 <= value <= 0.5 and not math.ldexp(value, 53).is_integer()


def on_grid(value: float, grid: float) -> bool:
    return (value / grid).is_integer()


def _numbers(answer: dict[str, Any]) -> list[float]:
    """Every released number of an answer that derives from the data: values and interval ends."""
    out: list[float] = []
    result = answer["result"]
    cells = result if isinstance(result, list) else [{"value": result, **answer["accuracy"]}]
    for cell in cells:
        out.append(cell["value"])
        out += cell.get("ci95", []) + cell.get("ci95_worst_case", [])
    return out


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("grouped", [False, True], ids=["filtered", "grouped"])
@pytest.mark.parametrize("aggregate", REAL_AGGREGATES)
def test_no_output_is_reachable_from_one_neighbour_only(
    worlds: tuple[World, World], aggregate: str, grouped: bool, mechanism: str
) -> None:
    spec: dict[str, Any] = {"aggregate": aggregate, "column": "x", **MECHANISMS[mechanism]}
    spec.update({"group_by": ["name"]} if grouped else {"where": ALICE_ONLY})
    grids: dict[str, set[float]] = {}
    flagged = 0
    for world, label in zip(worlds, ("with", "without"), strict=True):
        grids[label] = set()
        for _ in range(RELEASES):
            answer = world.fresh(1.0, **spec)
            grid = answer["accuracy"]["grid"]
            grids[label].add(grid)
            assert grid > 0 and math.log2(grid).is_integer()  # a power of two
            for number in _numbers(answer):
                assert math.isfinite(number)
                assert on_grid(number, grid), (number, grid)
                flagged += impossible_with_alice(number)
    # The grid is public: the same in both worlds and for every answer.
    assert grids["with"] == grids["without"] and len(grids["with"]) == 1
    assert flagged == 0


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_counts_are_integers_in_both_worlds(worlds: tuple[World, World], mechanism: str) -> None:
    for world in worlds:
        for _ in range(10):
            answer = world.fresh(1.0, aggregate="count", where=ALICE_ONLY,
                                 **MECHANISMS[mechanism])
            assert isinstance(answer["result"], int) and answer["accuracy"]["grid"] == 1


def test_the_distinguisher_has_power() -> None:
    """Continuous float noise, as the service released before: the check flags a large share
    of the answers without Alice (measured here: 22% for Laplace at ε = 1, 3% for Gaussian at
    ε = 0.5, δ = 1e-6) and none with her."""
    laplace = Laplace(epsilon=1.0, sensitivity=1.0, random_state=np.random.RandomState(1))
    gaussian = Gaussian(epsilon=0.5, delta=1e-6, sensitivity=1.0,
                        random_state=np.random.RandomState(2))
    for mechanism, at_least in ((laplace, 0.2), (gaussian, 0.02)):
        without = [mechanism.randomise(0.0) for _ in range(2000)]
        with_alice = [mechanism.randomise(1.0) for _ in range(2000)]
        assert not any(impossible_with_alice(v) for v in with_alice)  # sound: no false alarms
        assert np.mean([impossible_with_alice(v) for v in without]) >= at_least
