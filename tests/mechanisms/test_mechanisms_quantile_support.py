"""Every output of the quantile mechanisms is possible under every dataset, and the charged
Decimal ε/δ become floats that never exceed them.

The auditor's pair: 200 values uniform in [0, 0.5] and the same plus one row, bounds [0, 1],
q = 0.5. At ε = 8 the float exponential mechanism gives the cells near 1 a weight far below an
ulp of the running sum: no uniform u can draw them, under either dataset, and which cells are
lost depends on the data. The mixture with an exactly uniform draw (probability 2^-30) gives
each of the K cells probability >= 2^-30/K under both.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.random import RandomState

import mechanisms.quantile as quantile
from mechanisms import float_at_most, quantile_index
from mechanisms.quantile import (
    BOUND_CELLS,
    POINT_CELLS,
    UNIFORM_SHARE_DENOMINATOR,
    _calibrated_cell,
    _distance,
    _indexed_bound_distribution,
    _piece_ranks,
    _ranks,
    _sample_index,
)

LOW, HIGH, Q, EPS = 0.0, 1.0, 0.5, 8.0


def _pair() -> tuple[np.ndarray, np.ndarray]:
    base = np.random.default_rng(2024).uniform(0.0, 0.5, 200)
    return base, np.append(base, 0.25)


def _point_log_weights(values: np.ndarray) -> np.ndarray:
    """The log weights ``_sample_quantile`` hands to ``_sample_index`` (point share ε/2)."""
    index = quantile_index(values, lower=LOW, upper=HIGH)
    ranks = _ranks(index, None)
    cell_ranks = ranks.cum[index.point_left].astype(np.float64)
    cell_ranks[-1] = ranks.n
    per_rank = EPS * quantile.POINT_SHARE / 2.0
    result: np.ndarray = per_rank * -_distance(Q * ranks.n, cell_ranks[:-1], cell_ranks[1:])
    return result


class _Rigged(RandomState):
    """A seeded source whose draws of the 2^30-sided coin come up 0 (the uniform branch) and
    whose draw among ``forced_n`` candidates returns ``forced``: it shows which path a given
    cell goes through; the probability of that path is read off the code's exact integers."""

    def __init__(self, forced_n: int, forced: int) -> None:
        super().__init__(7)
        self.forced_n, self.forced = forced_n, forced
        self.calls: list[int] = []

    def randint(self, low: Any, high: Any = None, size: Any = None, dtype: Any = int) -> Any:
        if high == UNIFORM_SHARE_DENOMINATOR:
            self.calls.append(high)
            return 0
        if high == self.forced_n:
            self.calls.append(high)
            return self.forced
        return super().randint(low, high, size, dtype)


def test_the_uniform_share_is_a_public_exact_probability() -> None:
    assert UNIFORM_SHARE_DENOMINATOR == 2**30  # p = 2^-30: per-cell floor p/K > 0, public


def test_a_cell_the_float_mechanism_cannot_draw_is_reachable_on_both_neighbours() -> None:
    target = int(0.75 * POINT_CELLS)  # far above the data: weight e^-(~200) of the largest
    for values in _pair():
        log_weights = _point_log_weights(values)
        assert log_weights.size == POINT_CELLS
        shifted = log_weights - log_weights.max()
        weights = np.exp(np.maximum(shifted, quantile._EXP_FLOOR)) * (shifted > quantile._EXP_FLOOR)
        cumulative = np.cumsum(weights)
        # The float inverse CDF draws cell j iff u·total lands in [cum[j-1], cum[j]): empty.
        assert cumulative[target] == cumulative[target - 1]
        # With the uniform coin up (prob exactly 2^-30) and the uniform draw on the target
        # (prob exactly 1/K), the sampler returns it: P(target) >= 2^-30 / K on both datasets.
        rng = _Rigged(POINT_CELLS, target)
        assert _sample_index(log_weights, rng) == target
        assert rng.calls == [UNIFORM_SHARE_DENOMINATOR, POINT_CELLS]
        floor = Fraction(1, UNIFORM_SHARE_DENOMINATOR) * Fraction(1, POINT_CELLS)
        assert floor > 0


def test_a_calibrated_bound_reaches_every_cell_with_the_uniform_share() -> None:
    target = BOUND_CELLS - 12345  # an upper-edge cell no lower bound on this data would pick
    for values in _pair():
        index = quantile_index(values, lower=LOW, upper=HIGH)
        ranks = _ranks(index, None)
        log_weights, first, count = _indexed_bound_distribution(
            index, ranks, LOW, HIGH, Q, EPS / 4, 1, "lower", _piece_ranks(index, ranks))
        rng = _Rigged(BOUND_CELLS, target)
        assert _calibrated_cell(log_weights, first, count, rng) == target
        # Uniform over the BOUND_CELLS cells, not the (data-dependent) pieces.
        assert rng.calls == [UNIFORM_SHARE_DENOMINATOR, BOUND_CELLS]


def test_the_cell_inside_a_run_is_drawn_with_exact_integers() -> None:
    # One piece of `size` cells (plus an impossible one): the in-run offset is uniform_below,
    # whose draw the rigged source forces to the last cell; a float u·size could never be
    # asked for an exact integer range.
    size = 3 * 2**40 + 1
    log_weights = np.array([0.0, -np.inf])
    first = np.array([5, 0], dtype=np.int64)
    count = np.array([size, 1], dtype=np.int64)

    class Coin(_Rigged):
        def randint(self, low: Any, high: Any = None, size: Any = None, dtype: Any = int) -> Any:
            if high == UNIFORM_SHARE_DENOMINATOR:
                return 1  # the exponential branch
            return super().randint(low, high, size, dtype)

    rng = Coin(size, size - 1)
    assert _calibrated_cell(log_weights, first, count, rng) == 5 + size - 1
    assert rng.calls == [size]
    seeded = [_calibrated_cell(log_weights, first, count, RandomState(s)) for s in range(200)]
    assert all(5 <= c < 5 + size for c in seeded)


def test_the_float_given_to_a_mechanism_never_exceeds_the_charged_decimal() -> None:
    for text in ("0.1", "0.3", "1e-5", "1e-10", "2.2", "0.7", "1", "0"):
        amount = Decimal(text)
        value = float_at_most(amount)
        assert Decimal(value) <= amount
        assert Decimal(np.nextafter(value, np.inf)) > amount  # the largest such float
    third = Decimal(1) / Decimal(3)
    assert Decimal(float_at_most(third)) <= third
    assert float(Decimal("0.1")) > float_at_most(Decimal("0.1"))  # nearest rounds up here
