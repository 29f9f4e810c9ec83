"""Calibrated 95% intervals: quantile and variance/std cover in 95 ± 1.5% of 2,000 releases.

Quantile coverage is measured with fresh data in every trial: on one fixed dataset it varies
around 95% with the random gaps between order statistics near the quantile (SD ~1% at ε = 1),
which no ε-DP mechanism over the values can avoid; the figures below are means over datasets.
Expected values, computed exactly (no noise sampling) over 40+ datasets per case:
normal n=300 q=.5 ε=1 94.8%, beta n=1000 q=.9 ε=1 94.9%, lognormal n=1000 q=.1 ε=2 95.0%,
uniform n=300 q=.1 ε=.5 94.5% (the bound meets rank 0: the anchor's regime).
Variance coverage is on fixed datasets (the pivot's error does not depend on the gaps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from numpy.random import RandomState

from mechanisms import Release, release_quantile, release_variance
from mechanisms.quantile import BOUND_CELLS, _bound_distribution

TRIALS = 2000
LOWER, UPPER = 0.0, 10.0

Sampler = Callable[[np.random.Generator, int], np.ndarray]
DISTRIBUTIONS: dict[str, Sampler] = {
    "normal": lambda g, n: g.normal(5.0, 1.5, n),
    "beta": lambda g, n: g.beta(2.0, 5.0, n) * 10.0,
    "lognormal": lambda g, n: g.lognormal(1.0, 0.5, n),
    "uniform": lambda g, n: g.uniform(0.0, 10.0, n),
}


def _covers(interval: tuple[float, float], truth: float) -> bool:
    return interval[0] <= truth <= interval[1]


@pytest.mark.parametrize(
    ("distribution", "n", "q", "epsilon"),
    [("normal", 300, 0.5, 1.0), ("beta", 1000, 0.9, 1.0), ("lognormal", 1000, 0.1, 2.0),
     ("uniform", 300, 0.1, 0.5)],
)
def test_quantile_calibrated_interval_covers_95_percent(
    distribution: str, n: int, q: float, epsilon: float
) -> None:
    data, rng = np.random.default_rng(51), RandomState(51)
    sample = DISTRIBUTIONS[distribution]
    hits, widths = 0, []
    for _ in range(TRIALS):
        column = sample(data, n)
        truth = float(np.quantile(np.clip(column, LOWER, UPPER), q))
        released = release_quantile(column, q=q, lower=LOWER, upper=UPPER, epsilon=epsilon,
                                    random_state=rng)
        hits += _covers(released.ci95, truth)
        widths.append(released.ci95[1] - released.ci95[0])
        assert released.ci95_worst_case == (LOWER, UPPER)
    assert abs(hits / TRIALS - 0.95) <= 0.015
    # Far narrower than the worst-case interval (4.5-7x on these cases).
    worst = [release_quantile(sample(data, n), q=q, lower=LOWER, upper=UPPER, epsilon=epsilon,
                              interval="worst_case", random_state=rng) for _ in range(50)]
    assert np.median(widths) * 3 < np.median([w.ci95[1] - w.ci95[0] for w in worst])


def test_quantile_worst_case_interval_covers_even_integer_data() -> None:
    # Ties at the quantile (integer data) break the calibrated interval's assumption: measured
    # mean coverage here is ~11% for "calibrated"; "worst_case" stays valid (~100%).
    data, rng = np.random.default_rng(52), RandomState(52)
    hits = 0
    for _ in range(300):
        column = data.poisson(3.0, 1000).astype(float)
        released = release_quantile(column, q=0.9, lower=0.0, upper=20.0, epsilon=1.0,
                                    interval="worst_case", random_state=rng)
        assert released.ci95_worst_case is None
        hits += _covers(released.ci95, float(np.quantile(column, 0.9)))
    assert hits / 300 >= 0.95


def test_quantile_calibrated_interval_handles_rows_clamped_to_a_bound() -> None:
    # 16% of the rows clamp to 0; q = 0.1 sits in that tie. The anchor counts the tied rows.
    data, rng = np.random.default_rng(53), RandomState(53)
    hits = 0
    for _ in range(300):
        column = data.normal(2.0, 2.0, 3000)
        truth = float(np.quantile(np.clip(column, LOWER, UPPER), 0.1))
        released = release_quantile(column, q=0.1, lower=LOWER, upper=UPPER, epsilon=0.25,
                                    random_state=rng)
        hits += _covers(released.ci95, truth)
    assert hits / 300 >= 0.95


def _output_log_probs(
    z: np.ndarray, q: float, epsilon: float, max_rows: int, side: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell log probability of the bound's output, as a step function over cell indices;
    the anchor shares its output with the end cell, so its mass is added there."""
    log_weights, first, count = _bound_distribution(
        np.sort(z), LOWER, UPPER, q, epsilon, max_rows, side  # type: ignore[arg-type]
    )
    total = np.logaddexp.reduce(log_weights)
    order = np.argsort(first[:-1])
    run_starts = first[:-1][order]
    run_values = (log_weights[:-1] - np.log(count[:-1].astype(float)) - total)[order]
    end = 0 if side == "lower" else BOUND_CELLS - 1
    starts = np.union1d(run_starts, [end, end + 1])  # the end cell on its own
    values = run_values[np.searchsorted(run_starts, starts, side="right") - 1]
    at_end = int(np.searchsorted(starts, end))
    values[at_end] = np.logaddexp(values[at_end], log_weights[-1] - total)
    return starts, values


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_calibrated_bound_is_epsilon_dp_on_neighbouring_datasets(side: str) -> None:
    """Exact output probabilities of one bound on D and D + one unit never differ by more
    than e^ε (ε the bound's budget), including rows added at a bound and into a tie."""
    g = np.random.default_rng(54)
    for trial in range(60):
        n = int(g.integers(0, 40))
        base = np.round(g.uniform(LOWER, UPPER, n), int(g.integers(0, 3)))
        base[g.random(n) < 0.2] = UPPER if trial % 2 else LOWER
        max_rows = int(g.integers(1, 3))
        extra = g.choice([LOWER, UPPER, float(g.uniform(LOWER, UPPER)),
                          float(base[0]) if n else 5.0], size=int(g.integers(1, max_rows + 1)))
        neighbour = np.concatenate([base, extra])
        for q in (0.0, 0.1, 0.5, 0.93, 1.0):
            for epsilon in (0.05, 1.0, 6.0):
                a_starts, a = _output_log_probs(base, q, epsilon, max_rows, side)
                b_starts, b = _output_log_probs(neighbour, q, epsilon, max_rows, side)
                cells = np.union1d(a_starts, b_starts)
                gap = (a[np.searchsorted(a_starts, cells, side="right") - 1]
                       - b[np.searchsorted(b_starts, cells, side="right") - 1])
                assert np.max(np.abs(gap)) <= epsilon + 1e-9


SKEWED = np.clip(np.random.default_rng(2024).exponential(1.5, 1000), LOWER, UPPER)
MODERATE = np.random.default_rng(2025).beta(2, 5, 300) * UPPER


@pytest.mark.parametrize(("mechanism", "delta"), [("laplace", 0.0), ("gaussian", 1e-6)])
@pytest.mark.parametrize("column", [SKEWED, MODERATE], ids=["n1000", "n300"])
def test_variance_and_std_intervals_are_calibrated(
    mechanism: str, delta: float, column: np.ndarray
) -> None:
    rng = RandomState(55)
    releases: list[Release] = [
        release_variance(column, lower=LOWER, upper=UPPER, epsilon=1.0, delta=delta,
                         mechanism=mechanism, random_state=rng)  # type: ignore[arg-type]
        for _ in range(TRIALS)
    ]
    truth = float(column.var())
    calibrated = np.mean([_covers(r.ci95, truth) for r in releases])
    assert abs(calibrated - 0.95) <= 0.015
    # The worst-case interval (free: same released values) is valid for every dataset and
    # over-covers here (measured 96-98%). It is ci95 itself in the releases whose noisy count
    # came out too noisy for the calibrated interval (Gaussian n = 300: ~8% of them).
    worst_case = [r.ci95_worst_case for r in releases]
    assert all(w is not None for w in worst_case)
    assert np.mean([r.ci95_worst_case == r.ci95 for r in releases]) < 0.15
    assert 0.95 <= np.mean([_covers(w, truth) for w in worst_case]) <= 0.995
    assert np.median([r.ci95[1] - r.ci95[0] for r in releases]) < np.median(
        [w[1] - w[0] for w in worst_case])
    # std: the same noise gives the square-rooted intervals, hence the same coverage.
    std_rng, var_rng = RandomState(56), RandomState(56)
    for _ in range(10):
        variance = release_variance(column, lower=LOWER, upper=UPPER, epsilon=1.0, delta=delta,
                                    mechanism=mechanism, random_state=var_rng)  # type: ignore[arg-type]
        std = release_variance(column, lower=LOWER, upper=UPPER, epsilon=1.0, delta=delta,
                               mechanism=mechanism, std=True, random_state=std_rng)  # type: ignore[arg-type]
        assert std.value == pytest.approx(math.sqrt(variance.value))
        assert std.ci95 == pytest.approx(tuple(np.sqrt(variance.ci95)))
        if variance.ci95_worst_case is not None:
            assert std.ci95_worst_case == pytest.approx(tuple(np.sqrt(variance.ci95_worst_case)))


def test_variance_falls_back_to_the_valid_interval_when_the_count_is_too_noisy() -> None:
    # n = 40 at ε = 0.5: the count's noise std (11) is 28% of n, too noisy for the plug-in.
    released = release_variance(MODERATE[:40], lower=LOWER, upper=UPPER, epsilon=0.5,
                                random_state=RandomState(57))
    # ci95 is then the worst-case interval itself; it is repeated, so the shape never changes.
    assert released.ci95_worst_case == released.ci95
