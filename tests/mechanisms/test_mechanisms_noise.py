"""The noise on counts and sums has exactly the claimed law, and its 95% intervals cover.

Goodness-of-fit tests must accept the claimed scale and reject half of it (so they have power).
Seeds are fixed; thresholds are far from what a correct implementation produces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.random import RandomState
from scipy import stats

from mechanisms import (
    CountNoise,
    DiscreteLaplaceNoise,
    GaussianNoise,
    LaplaceNoise,
    calibrate_gaussian_sigma,
    release_count,
    release_sum,
)
from mechanisms.discrete import _analytic_delta, analytic_gaussian_multiplier

RELEASES = 4000
COLUMN = np.linspace(-3.0, 9.0, 120)  # fixed data; true clamped sum below
LOWER, UPPER = -5.0, 10.0
TRUE_SUM = float(np.sum(COLUMN))


def _discrete_laplace_chisquare(noise: np.ndarray, p: float) -> float:
    """p-value of a chi-square test of integer ``noise`` against discrete Laplace(p)."""
    n = noise.size
    norm = (1 - p) / (1 + p)
    # Individual cells for every k whose expected count is >= 5, tails pooled.
    k_max = max(0, math.floor(math.log(5 / (n * norm)) / math.log(p))) if p > 0 else 0
    ks = np.arange(-k_max, k_max + 1)
    expected = n * norm * p ** np.abs(ks)
    tail = (n - expected.sum()) / 2
    observed = np.array([np.sum(noise == k) for k in ks])
    observed = np.concatenate(([np.sum(noise < -k_max)], observed, [np.sum(noise > k_max)]))
    expected = np.concatenate(([tail], expected, [tail]))
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("max_rows", [1, 3])
def test_count_noise_is_discrete_laplace_at_the_claimed_scale(max_rows: int) -> None:
    epsilon, true = 0.5, 40
    rng = RandomState(11)
    noise = np.array(
        [
            release_count(true, epsilon=epsilon, max_rows=max_rows, random_state=rng).value - true
            for _ in range(RELEASES)
        ]
    )
    claimed = math.exp(-epsilon / max_rows)
    halved_scale = math.exp(-2 * epsilon / max_rows)  # scale max_rows/epsilon halved
    assert _discrete_laplace_chisquare(noise, claimed) > 1e-3
    assert _discrete_laplace_chisquare(noise, halved_scale) < 1e-6
    assert noise.std() == pytest.approx(DiscreteLaplaceNoise(epsilon=epsilon,
                                        sensitivity=max_rows).std, rel=0.08)


@pytest.mark.parametrize("max_rows", [1, 2])
def test_laplace_sum_noise_matches_claimed_scale(max_rows: int) -> None:
    epsilon = 0.8
    rng = RandomState(12)
    noise = np.array(
        [
            release_sum(COLUMN, lower=LOWER, upper=UPPER, epsilon=epsilon, max_rows=max_rows,
                        random_state=rng).value - TRUE_SUM
            for _ in range(RELEASES)
        ]
    )
    scale = max_rows * max(abs(LOWER), abs(UPPER)) / epsilon
    assert stats.kstest(noise, stats.laplace(scale=scale).cdf).pvalue > 1e-3
    assert stats.kstest(noise, stats.laplace(scale=scale / 2).cdf).pvalue < 1e-6


def test_gaussian_sum_noise_matches_analytic_sigma() -> None:
    epsilon, delta = 0.8, 1e-6
    rng = RandomState(13)
    noise = np.array(
        [
            release_sum(COLUMN, lower=LOWER, upper=UPPER, epsilon=epsilon, delta=delta,
                        mechanism="gaussian", random_state=rng).value - TRUE_SUM
            for _ in range(RELEASES)
        ]
    )
    sigma = calibrate_gaussian_sigma(epsilon, delta, max(abs(LOWER), abs(UPPER)))
    assert stats.kstest(noise, stats.norm(scale=sigma).cdf).pvalue > 1e-3
    assert stats.kstest(noise, stats.norm(scale=sigma / 2).cdf).pvalue < 1e-6


def test_analytic_sigma_is_diffprivlibs_and_smaller_than_classic() -> None:
    from diffprivlib.mechanisms import GaussianAnalytic

    for epsilon, delta, sensitivity in [(0.1, 1e-7, 1.0), (1.0, 1e-5, 3.0), (4.0, 1e-9, 0.5)]:
        reference = math.sqrt(
            GaussianAnalytic(epsilon=epsilon, delta=delta, sensitivity=sensitivity).variance(0)
        )
        ours = calibrate_gaussian_sigma(epsilon, delta, sensitivity)
        # Our own root of Balle & Wang's equation (diffprivlib's search stops ~1e-8 early).
        assert ours == pytest.approx(reference, rel=1e-7)
        assert _analytic_delta(analytic_gaussian_multiplier(epsilon, delta), epsilon) <= delta
        # The float-safe mechanism is a discrete Gaussian on a fine grid: σ never below it.
        grid_sigma = GaussianNoise(epsilon=epsilon, delta=delta, sensitivity=sensitivity).std
        assert ours <= grid_sigma == pytest.approx(ours, rel=1e-6)
        if epsilon <= 1:
            classic = math.sqrt(2 * math.log(1.25 / delta)) * sensitivity / epsilon
            assert ours < classic


def _coverage(releases: list[tuple[float, float]], truth: float) -> float:
    return float(np.mean([low <= truth <= high for low, high in releases]))


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_count_interval_covers_95_percent(mechanism: str) -> None:
    epsilon, delta, true = 0.2, (1e-6 if mechanism == "gaussian" else 0.0), 25
    counter = CountNoise(epsilon=epsilon, delta=delta, mechanism=mechanism,  # type: ignore[arg-type]
                         random_state=RandomState(14))
    coverage = _coverage([counter.release(true).ci95 for _ in range(RELEASES)], true)
    # Integer noise: the exact coverage of the interval is a little above 95%.
    assert 0.95 <= counter.coverage <= 0.96
    assert abs(coverage - counter.coverage) < 0.012
    assert abs(coverage - 0.95) <= 0.015


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_sum_interval_covers_exactly_95_percent(mechanism: str) -> None:
    delta = 1e-6 if mechanism == "gaussian" else 0.0
    rng = RandomState(15)
    intervals = [
        release_sum(COLUMN, lower=LOWER, upper=UPPER, epsilon=0.5, delta=delta,
                    mechanism=mechanism, random_state=rng).ci95  # type: ignore[arg-type]
        for _ in range(RELEASES)
    ]
    assert abs(_coverage(intervals, TRUE_SUM) - 0.95) <= 0.015


def test_interval_halfwidths_are_the_exact_quantiles() -> None:
    laplace = LaplaceNoise(epsilon=0.5, sensitivity=2.0)
    assert laplace.ci95_halfwidth() == pytest.approx(stats.laplace(scale=4.0).ppf(0.975))
    gaussian = GaussianNoise(epsilon=0.5, delta=1e-6, sensitivity=2.0)
    assert gaussian.ci95_halfwidth() == pytest.approx(stats.norm(scale=gaussian.std).ppf(0.975))
    discrete = DiscreteLaplaceNoise(epsilon=0.2, sensitivity=1)
    k = discrete.ci95_halfwidth()
    assert discrete.coverage(k) >= 0.95 > discrete.coverage(k - 1)


def test_seeded_releases_are_reproducible_and_default_is_system_random() -> None:
    first = release_sum(COLUMN, lower=LOWER, upper=UPPER, epsilon=1.0, random_state=7)
    second = release_sum(COLUMN, lower=LOWER, upper=UPPER, epsilon=1.0, random_state=7)
    assert first == second
    unseeded = {release_count(10, epsilon=1.0).value for _ in range(50)}
    assert len(unseeded) > 1
