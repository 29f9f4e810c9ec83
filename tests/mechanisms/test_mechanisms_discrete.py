"""The exact integer samplers and the discrete Gaussian's calibration (mechanisms.discrete).

Reference values: diffprivlib's GaussianDiscrete (the same CKS Theorem 7 curve, summed term by
term; usable only for small σ) and GaussianAnalytic (Balle & Wang). Laws: chi-square against
the exact pmfs at small scales, moments at the grid scales the releases use. Seeds are fixed;
thresholds are far from what a correct sampler produces, and each test also rejects a wrong law.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from secrets import SystemRandom

import numpy as np
import pytest
from diffprivlib.mechanisms import GaussianDiscrete
from numpy.random import RandomState
from scipy import stats

from mechanisms.discrete import (
    _system_bits,
    analytic_gaussian_multiplier,
    bernoulli,
    bernoulli_exp,
    calibrate_discrete_gaussian,
    discrete_gaussian_coverage,
    discrete_gaussian_delta,
    sample_discrete_gaussian,
    sample_discrete_laplace,
    uniform_below,
)
from mechanisms.noise import DiscreteGaussianNoise, DiscreteLaplaceNoise

DRAWS = 6000


def _chisquare(samples: np.ndarray, pmf: dict[int, float]) -> float:
    """p-value of samples against pmf; cells with expected count < 5 pooled into the tails."""
    keys = [k for k, p in sorted(pmf.items()) if p * samples.size >= 5]
    expected = np.array([pmf[k] * samples.size for k in keys])
    observed = np.array([np.sum(samples == k) for k in keys])
    lo, hi = keys[0], keys[-1]
    tails = np.array([np.sum(samples < lo), np.sum(samples > hi)])
    tail_expected = np.array([sum(p for k, p in pmf.items() if k < lo),
                              sum(p for k, p in pmf.items() if k > hi)]) * samples.size
    return float(stats.chisquare(np.concatenate([observed, tails]),
                                 np.concatenate([expected, tail_expected])).pvalue)


def _laplace_pmf(scale: float, span: int = 200) -> dict[int, float]:
    p = math.exp(-1.0 / scale)
    return {k: (1 - p) / (1 + p) * p ** abs(k) for k in range(-span, span + 1)}


def _gaussian_pmf(sigma: float, span: int = 200) -> dict[int, float]:
    weights = {k: math.exp(-k * k / (2 * sigma * sigma)) for k in range(-span, span + 1)}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


@pytest.mark.parametrize("scale", [Fraction(3, 2), Fraction(7)])
def test_discrete_laplace_has_the_exact_law(scale: Fraction) -> None:
    rng = RandomState(21)
    draws = np.array([sample_discrete_laplace(rng, scale) for _ in range(DRAWS)])
    assert _chisquare(draws, _laplace_pmf(float(scale))) > 1e-3
    assert _chisquare(draws, _laplace_pmf(float(scale) * 1.5)) < 1e-6  # power


@pytest.mark.parametrize("sigma", [Fraction(3, 2), Fraction(6)])
def test_discrete_gaussian_has_the_exact_law(sigma: Fraction) -> None:
    rng = RandomState(22)
    draws = np.array([sample_discrete_gaussian(rng, sigma) for _ in range(DRAWS)])
    assert _chisquare(draws, _gaussian_pmf(float(sigma))) > 1e-3
    assert _chisquare(draws, _gaussian_pmf(float(sigma) * 1.3)) < 1e-6


def test_samplers_at_grid_scales_have_the_claimed_spread() -> None:
    # The releases' scales: ~2^31 grid steps. Every integer is reachable (no float inversion).
    rng = RandomState(23)
    scale = Fraction(2**31) / Fraction(0.5)
    laplace = np.array([sample_discrete_laplace(rng, scale) for _ in range(3000)], dtype=float)
    assert stats.kstest(laplace, stats.laplace(scale=float(scale)).cdf).pvalue > 1e-3
    assert stats.kstest(laplace, stats.laplace(scale=float(scale) / 1.3).cdf).pvalue < 1e-6
    sigma = calibrate_discrete_gaussian(0.5, 1e-6, 2**30)
    gauss = np.array([sample_discrete_gaussian(rng, Fraction(sigma)) for _ in range(3000)],
                     dtype=float)
    assert stats.kstest(gauss, stats.norm(scale=sigma).cdf).pvalue > 1e-3
    assert stats.kstest(gauss, stats.norm(scale=sigma / 1.3).cdf).pvalue < 1e-6
    assert len(set(laplace)) == laplace.size  # no lattice of reachable values at this scale


def test_bernoulli_trials_are_exact() -> None:
    rng = RandomState(24)
    for gamma, label in ((Fraction(3, 10), "below 1"), (Fraction(5, 2), "above 1")):
        hits = sum(bernoulli_exp(rng, gamma.numerator, gamma.denominator) for _ in range(DRAWS))
        expected = math.exp(-float(gamma))
        assert stats.binomtest(hits, DRAWS, expected).pvalue > 1e-3, label
        assert stats.binomtest(hits, DRAWS, expected * 1.2).pvalue < 1e-6, label
    assert not any(bernoulli(rng, 0, 7) for _ in range(100))
    assert all(bernoulli(rng, 7, 7) for _ in range(100))


@pytest.mark.parametrize("source", ["system", "seeded"])
@pytest.mark.parametrize("n", [1, 3, 2**70 + 5])
def test_uniform_integers_cover_their_range_uniformly(source: str, n: int) -> None:
    rng = SystemRandom() if source == "system" else RandomState(25)
    draws = [uniform_below(rng, n) for _ in range(3000)]
    assert all(0 <= d < n for d in draws)
    if n == 3:
        assert stats.chisquare(np.bincount(draws, minlength=3)).pvalue > 1e-3
    if n > 2**64:  # the top half of a wide range is drawn about half the time
        assert 0.45 < np.mean([d >= n // 2 for d in draws]) < 0.55


def test_samplers_refuse_bad_parameters() -> None:
    rng = RandomState(26)
    with pytest.raises(ValueError):
        uniform_below(rng, 0)
    with pytest.raises(ValueError):
        sample_discrete_laplace(rng, Fraction(0))
    with pytest.raises(ValueError):
        sample_discrete_gaussian(rng, Fraction(-1))


def test_buffered_system_bits_are_not_shared_with_a_forked_child() -> None:
    _system_bits(8)  # fill this process's pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw from what would be the inherited pool
        os.write(write, _system_bits(256).to_bytes(32, "little"))
        os._exit(0)
    os.waitpid(pid, 0)
    child = int.from_bytes(os.read(read, 32), "little")
    assert child != _system_bits(256)


@pytest.mark.parametrize(("epsilon", "delta", "sensitivity"),
                         [(1.0, 1e-6, 1), (0.2, 1e-6, 1), (0.5, 1e-5, 3), (2.0, 1e-6, 2)])
def test_discrete_calibration_matches_diffprivlibs_reference(
    epsilon: float, delta: float, sensitivity: int
) -> None:
    ours = calibrate_discrete_gaussian(epsilon, delta, sensitivity)
    reference = GaussianDiscrete(epsilon=epsilon, delta=delta, sensitivity=sensitivity)._scale
    # diffprivlib bisects to rtol 1e-6 and may stop on either side of the root; ours is on
    # the valid side, and never below the continuous analytic σ (the ledger's multiplier).
    assert ours == pytest.approx(reference, rel=2e-6) or ours == pytest.approx(
        analytic_gaussian_multiplier(epsilon, delta) * sensitivity)
    assert discrete_gaussian_delta(ours, epsilon, sensitivity) <= delta
    assert ours >= analytic_gaussian_multiplier(epsilon, delta) * sensitivity
    # one negative check: a slightly smaller σ breaks (ε, δ) when the floor does not bind
    if ours > analytic_gaussian_multiplier(epsilon, delta) * sensitivity * (1 + 1e-9):
        assert discrete_gaussian_delta(ours * 0.999, epsilon, sensitivity) > delta


def test_large_sigma_calibration_is_the_analytic_one_and_valid() -> None:
    for epsilon, delta in ((0.5, 1e-6), (1.0, 1e-9), (0.05, 1e-7)):
        sigma = calibrate_discrete_gaussian(epsilon, delta, 2**30)
        analytic = analytic_gaussian_multiplier(epsilon, delta) * 2**30
        assert analytic <= sigma <= analytic * (1 + 1e-6)
        assert discrete_gaussian_delta(sigma, epsilon, 2**30) <= delta
        assert discrete_gaussian_delta(sigma * 0.99, epsilon, 2**30) > delta


def test_intervals_of_the_integer_laws_are_their_exact_quantiles() -> None:
    laplace = DiscreteLaplaceNoise(epsilon=0.3, sensitivity=2**30)
    k = laplace.ci95_halfwidth()
    assert laplace.coverage(k) >= 0.95 > laplace.coverage(k - 1)
    assert k == pytest.approx(2**30 / 0.3 * math.log(20), rel=1e-8)
    small = DiscreteGaussianNoise(epsilon=1.0, delta=1e-6, sensitivity=1)
    k = small.ci95_halfwidth()
    assert small.coverage(k) >= 0.95 > small.coverage(k - 1)
    big = DiscreteGaussianNoise(epsilon=1.0, delta=1e-6, sensitivity=2**30)
    k = big.ci95_halfwidth()
    assert discrete_gaussian_coverage(big.sigma, k) >= 0.95
    assert k == pytest.approx(1.959963984540054 * big.sigma, rel=1e-8)
