"""Exact samplers and calibration for integer-valued noise: the one place primitives are composed.

Why not diffprivlib's samplers directly: its ``Geometric`` inverts the CDF of a 53-bit float
uniform, so at a large scale t some integers far in the tail can never be drawn (they are
reachable with probability ~t·2^-52 in total): the set of outputs then depends on the true
value, the floating-point leak this module exists to remove. Its ``GaussianDiscrete`` draws a
geometric variable one Bernoulli trial at a time (O(σ) work per sample) and its calibration sums
the pmf term by term, refusing σ beyond ~26,000; the grids used for real values need σ ~ 2^32
grid units. So the algorithms of Canonne, Kamath & Steinke ("The Discrete Gaussian for
Differential Privacy", NeurIPS 2020; arXiv:2004.00010, Algorithms 1-3) are implemented here
with exact rational arithmetic (``fractions.Fraction``) and exact uniform integers: every
integer is reachable and every probability is exact, whatever the scale.

Randomness comes from the resolved generator (``secrets.SystemRandom`` by default; a seeded
``RandomState`` in tests), through ``uniform_below`` only.

Calibration of the discrete Gaussian (``calibrate_discrete_gaussian``): CKS Theorem 7 gives the
exact (ε, δ) curve of N_Z(0, σ²) at integer sensitivity Δ,

    δ = P[X > εσ²/Δ - Δ/2] - e^ε · P[X > εσ²/Δ + Δ/2],   X ~ N_Z(0, σ²).

``discrete_gaussian_delta`` evaluates an upper bound on it (exact sums for σ <= 2^12, beyond
that rigorous integral bounds on the tail sums, which are within a relative ~1/σ of the sums),
and σ is taken as the smallest value on a fine search with that bound <= δ, and never below the
continuous analytic σ (Balle & Wang 2018) at the same Δ: so σ/Δ is at least the noise
multiplier the RDP accountant composes, and the discrete Gaussian's Rényi curve (CKS: the same
α·Δ²/(2σ²) as the continuous one) is covered by what the ledger records.
"""

from __future__ import annotations

import math
import os
import threading
from fractions import Fraction
from functools import lru_cache
from secrets import SystemRandom

import numpy as np
from scipy.optimize import brentq
from scipy.special import erfc, log_ndtr, ndtr

from .errors import InvalidPrivacyParameter
from .randomness import Rng

# Direct summation of the pmf below this σ (about 40σ terms); integral bounds above it.
_DIRECT_SIGMA = 4096.0
# Terms beyond 40σ weigh < e^-800 of the mass: zero in double precision.
_TAIL_SIGMAS = 40.0


# -- uniform integers and Bernoulli trials ------------------------------------------------------
# Integers, not Fractions, on the hot path: a release draws tens of these per noisy value.
_pool = threading.local()
_POOL_BITS = 4096


def _system_bits(k: int) -> int:
    """k bits from os.urandom (the source of ``secrets.SystemRandom``), read 512 bytes at a time.

    One system call per draw would dominate a release's cost. The pool is per thread (two
    requests must never share bits: equal noises would cancel in a difference) and per process
    (a forked worker must not reuse its parent's buffered bits)."""
    state = _pool.__dict__
    if state.get("pid") != os.getpid():
        state.update(pid=os.getpid(), bits=0, left=0)
    value, have = 0, 0
    while have < k:
        if state["left"] == 0:
            state["bits"], state["left"] = int.from_bytes(os.urandom(_POOL_BITS // 8)), _POOL_BITS
        take = min(k - have, state["left"])
        value |= (state["bits"] & ((1 << take) - 1)) << have
        state["bits"] >>= take
        state["left"] -= take
        have += take
    return value


def uniform_below(rng: Rng, n: int) -> int:
    """A uniform integer in [0, n), exact for any n >= 1 (rejection sampling on random bits)."""
    if n <= 1:
        if n == 1:
            return 0
        raise ValueError("n must be >= 1")
    bits = (n - 1).bit_length()
    while True:
        if isinstance(rng, SystemRandom):
            value = _system_bits(bits)
        elif bits <= 62:  # numpy's bounded integers are exact (masked rejection)
            return int(rng.randint(0, n, dtype=np.int64))
        else:  # seeded RandomState (tests), wide n
            value, have = 0, 0
            while have < bits:
                take = min(62, bits - have)
                value = (value << take) | int(rng.randint(0, 1 << take, dtype=np.int64))
                have += take
        if value < n:
            return value


def bernoulli(rng: Rng, numerator: int, denominator: int) -> bool:
    """True with probability numerator/denominator (in [0, 1]), exactly."""
    return uniform_below(rng, denominator) < numerator


def bernoulli_exp(rng: Rng, numerator: int, denominator: int) -> bool:
    """True with probability exp(-γ), γ = numerator/denominator >= 0, exactly (CKS Algorithm 1)."""
    while numerator > denominator:  # exp(-γ) = exp(-1)^floor(γ) · exp(-(γ - floor(γ)))
        if not bernoulli_exp(rng, 1, 1):
            return False
        numerator -= denominator
    k = 1
    while bernoulli(rng, numerator, denominator * k):
        k += 1
    return k % 2 == 1


# -- samplers ------------------------------------------------------------------------------------
def sample_discrete_laplace(rng: Rng, scale: Fraction) -> int:
    """One draw of the discrete Laplace law P(k) ∝ exp(-|k| / scale) (CKS Algorithm 2)."""
    if scale <= 0:
        raise ValueError("scale must be > 0")
    t, s = scale.numerator, scale.denominator  # scale = t / s
    while True:
        u = uniform_below(rng, t)
        if not bernoulli_exp(rng, u, t):
            continue
        v = 0
        while bernoulli_exp(rng, 1, 1):
            v += 1
        y = (u + t * v) // s
        negative = uniform_below(rng, 2) == 1
        if negative and y == 0:
            continue  # otherwise 0 would be drawn twice as often as it should
        return -y if negative else y


def sample_discrete_gaussian(rng: Rng, sigma: Fraction) -> int:
    """One draw of the discrete Gaussian N_Z(0, σ²): P(k) ∝ exp(-k²/(2σ²)) (CKS Algorithm 3)."""
    if sigma <= 0:
        raise ValueError("sigma must be > 0")
    a, b = sigma.numerator, sigma.denominator  # σ² = a²/b²
    a2, b2 = a * a, b * b
    t = a // b + 1
    while True:
        y = sample_discrete_laplace(rng, Fraction(t))
        # accept with exp(-(|y| - σ²/t)² / (2σ²)) = exp(-(|y|·t·b² - a²)² / (2·a²·t²·b²))
        excess = abs(y) * t * b2 - a2
        if bernoulli_exp(rng, excess * excess, 2 * a2 * t * t * b2):
            return y


# -- the discrete Gaussian's law -----------------------------------------------------------------
def _integral_tail(m: float, sigma: float) -> float:
    """∫_m^∞ exp(-x²/(2σ²)) dx."""
    return sigma * math.sqrt(math.pi / 2.0) * float(erfc(m / (sigma * math.sqrt(2.0))))


def _tail_bounds(m: int, sigma: float) -> tuple[float, float]:
    """Bounds (low, high) on T(m) = Σ_{k >= m} exp(-k²/(2σ²)) for an integer m >= 0.

    The summand decreases for k >= 0, so ∫_m^∞ <= T(m) <= exp(-m²/(2σ²)) + ∫_m^∞.
    """
    if sigma <= _DIRECT_SIGMA:
        k = np.arange(m, m + int(_TAIL_SIGMAS * sigma) + 2, dtype=np.float64)
        exact = float(np.sum(np.exp(-(k * k) / (2.0 * sigma * sigma))))
        return exact, exact
    integral = _integral_tail(float(m), sigma)
    return integral, integral + math.exp(-float(m) ** 2 / (2.0 * sigma * sigma))


def _normaliser_bounds(sigma: float) -> tuple[float, float]:
    """Bounds on Z = Σ_k exp(-k²/(2σ²)) = 1 + 2·T(1)."""
    low, high = _tail_bounds(1, sigma)
    if sigma > _DIRECT_SIGMA:
        # Poisson summation: Z = σ√(2π)·(1 + 2Σ_j exp(-2π²σ²j²)); the correction is 0 here.
        root = sigma * math.sqrt(2.0 * math.pi)
        return root, root * (1.0 + 1e-15)
    return 1.0 + 2.0 * low, 1.0 + 2.0 * high


def _greater_than(t: float, sigma: float, upper: bool) -> float:
    """An upper (``upper``) or lower bound on P[X > t], X ~ N_Z(0, σ²)."""
    z_low, z_high = _normaliser_bounds(sigma)
    if t >= 0:
        low, high = _tail_bounds(math.floor(t) + 1, sigma)
        return high / z_low if upper else low / z_high
    # P[X > t] = 1 - P[X <= t] = 1 - P[X >= ceil(-t)] by symmetry
    low, high = _tail_bounds(math.ceil(-t), sigma)
    return 1.0 - (low / z_high if upper else high / z_low)


def discrete_gaussian_delta(sigma: float, epsilon: float, sensitivity: int) -> float:
    """An upper bound on the δ at which N_Z(0, σ²) is ε-DP at integer ``sensitivity``
    (CKS Theorem 7; exact up to rounding for σ <= 4096)."""
    centre = epsilon * sigma * sigma / sensitivity
    first = _greater_than(centre - sensitivity / 2.0, sigma, upper=True)
    second = _greater_than(centre + sensitivity / 2.0, sigma, upper=False)
    return max(0.0, first - math.exp(epsilon) * second)


def discrete_gaussian_coverage(sigma: float, halfwidth: int) -> float:
    """A lower bound on P(|X| <= halfwidth), X ~ N_Z(0, σ²) (exact for σ <= 4096)."""
    z_low, _ = _normaliser_bounds(sigma)
    _, high = _tail_bounds(halfwidth + 1, sigma)
    return max(0.0, 1.0 - 2.0 * high / z_low)


def discrete_gaussian_std(sigma: float) -> float:
    """Standard deviation of N_Z(0, σ²) (below σ; equal to it in double precision for
    σ >= 4096, where the Poisson-summation correction is zero)."""
    if sigma > _DIRECT_SIGMA:
        return sigma
    k = np.arange(0, int(_TAIL_SIGMAS * sigma) + 2, dtype=np.float64)
    weights = np.exp(-(k * k) / (2.0 * sigma * sigma))
    total = 2.0 * float(np.sum(weights)) - 1.0
    return math.sqrt(2.0 * float(np.sum(k * k * weights)) / total)


# -- calibration ---------------------------------------------------------------------------------
def _analytic_delta(multiplier: float, epsilon: float) -> float:
    """δ of the continuous Gaussian with σ = multiplier · Δ (Balle & Wang 2018, Theorem 8)."""
    a = 1.0 / (2.0 * multiplier)
    b = epsilon * multiplier
    return float(ndtr(a - b)) - math.exp(epsilon + float(log_ndtr(-a - b)))


@lru_cache(maxsize=4096)
def analytic_gaussian_multiplier(epsilon: float, delta: float) -> float:
    """σ/Δ of the analytic Gaussian mechanism (Balle & Wang 2018): the smallest σ with
    δ(σ) <= δ, rounded up so the returned value itself satisfies it."""
    low, high = 1e-3, 1.0
    while _analytic_delta(high, epsilon) > delta:
        high *= 2.0
        if high > 1e12:
            raise InvalidPrivacyParameter(f"no Gaussian noise meets epsilon={epsilon}, delta={delta}")
    while _analytic_delta(low, epsilon) <= delta and low > 1e-12:
        low /= 2.0
    root = float(brentq(lambda s: _analytic_delta(s, epsilon) - delta, low, high,
                        xtol=1e-300, rtol=1e-15, maxiter=500))
    while _analytic_delta(root, epsilon) > delta:  # never on the wrong side of the root
        root = math.nextafter(root, math.inf)
    return root


@lru_cache(maxsize=4096)
def calibrate_discrete_gaussian(epsilon: float, delta: float, sensitivity: int) -> float:
    """σ (in integer units) of a discrete Gaussian that is (ε, δ)-DP at integer ``sensitivity``
    and has σ/Δ at least the analytic Gaussian's multiplier (see the module docstring)."""
    floor_sigma = analytic_gaussian_multiplier(epsilon, delta) * sensitivity
    if discrete_gaussian_delta(floor_sigma, epsilon, sensitivity) <= delta:
        return floor_sigma
    # The bound's slack (or the discreteness at small σ) needs a little more: bisect above.
    low, high = floor_sigma, floor_sigma * 1.01
    while discrete_gaussian_delta(high, epsilon, sensitivity) > delta:
        low, high = high, high * 1.5
    for _ in range(60):
        mid = (low + high) / 2.0
        if discrete_gaussian_delta(mid, epsilon, sensitivity) <= delta:
            high = mid
        else:
            low = mid
    return high
