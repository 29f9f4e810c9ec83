"""Additive noise mechanisms with integer noise: every released value is float-safe.

A released float must not carry the true value in its low-order bits (Mironov, "On
significance of the least significant bits for differential privacy", CCS 2012): ``value +
continuous float noise`` can produce a given float from one neighbouring dataset and not from
the other. So nothing here adds floating-point noise. Integer queries (counts) get integer noise
at their integer sensitivity. A real value is first put on a public power-of-two grid γ,
k = round(value / γ), then k + Z is released as (k + Z)·γ, Z integer noise at the integer
sensitivity of k; γ being a power of two, (k + Z)·γ is exact for |k + Z| < 2^53, and in any case
a fixed function of the integer k + Z, so the set of possible outputs is {f(j) : j ∈ Z}, the
same for every dataset.

* Laplace-type: the discrete Laplace (geometric) law P(Z = j) ∝ exp(-ε|j|/Δ), ε-DP at integer
  L1 sensitivity Δ.
* Gaussian: the discrete Gaussian N_Z(0, σ²) (Canonne, Kamath & Steinke 2020), (ε, δ)-DP at
  integer sensitivity Δ by their Theorem 7, with σ/Δ at least the analytic Gaussian multiplier
  (so Rényi-DP accounting with that multiplier is conservative). See ``discrete``.

Samples are exact (``mechanisms.discrete``: rational arithmetic and exact uniform integers from
the CSPRNG); the reason diffprivlib's ``Geometric``/``GaussianDiscrete`` samplers are not used
is given there. Each class knows its noise law, so intervals need no simulation.
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist
from typing import Literal

from .discrete import (
    analytic_gaussian_multiplier,
    calibrate_discrete_gaussian,
    discrete_gaussian_coverage,
    discrete_gaussian_std,
    sample_discrete_gaussian,
    sample_discrete_laplace,
)
from .errors import InvalidDomain, InvalidPrivacyParameter
from .randomness import RandomSource, Rng, resolve_rng
from .validation import (
    NoiseKind,
    Number,
    check_delta,
    check_epsilon,
    check_sensitivity,
)

Z95 = NormalDist().inv_cdf(0.975)
"""Two-sided 95% quantile of the standard normal (1.959963...)."""

LN20 = math.log(20.0)
"""P(|Lap(b)| <= b ln 20) = 0.95 exactly."""

GRID_BITS = 30
"""A grid puts the largest magnitude a row can contribute at <= 2^30 grid steps: one row's
rounding error is at most 2^-31 of it, and n·2^30 stays exact in float64 up to n = 2^23 rows
(and in int64 up to 2^33)."""


def grid_for(magnitude: Number) -> float:
    """The public grid for values of absolute size up to ``magnitude``: the power of two
    γ = 2^(e - GRID_BITS) with magnitude <= 2^e. Depends only on public parameters.

    Raises InvalidDomain when ``magnitude`` is not finite and > 0, or the grid would underflow.
    """
    m = float(magnitude)
    if not (math.isfinite(m) and m > 0):
        raise InvalidDomain(f"a grid needs a finite magnitude > 0, got {magnitude!r}")
    _, exponent = math.frexp(m)  # m = f·2^e with 0.5 <= f < 1, so m < 2^e
    if exponent - GRID_BITS < -1022:
        raise InvalidDomain(f"bounds of magnitude {m!r} are too small for a float-safe grid")
    return math.ldexp(1.0, exponent - GRID_BITS)


def _integer_sensitivity(sensitivity: object) -> int:
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or sensitivity < 0:
        # Integer noise only protects integer-valued queries with integer sensitivity.
        raise InvalidPrivacyParameter(
            f"sensitivity must be an integer >= 0 for discrete noise, got {sensitivity!r}"
        )
    return sensitivity


class DiscreteLaplaceNoise:
    """The geometric (discrete Laplace) mechanism for integer queries.

    Adds integer noise Z with P(Z = k) = (1 - p)/(1 + p) · p^|k|, p = exp(-ε / sensitivity),
    drawn exactly (``discrete.sample_discrete_laplace``). Guarantee: ε-differential privacy
    for an integer query whose L1 sensitivity (add/remove of one privacy unit) is at most
    ``sensitivity``.

    Raises InvalidPrivacyParameter for a bad ε or a sensitivity that is not an integer >= 0.
    """

    kind: Literal["discrete_laplace"] = "discrete_laplace"
    family: Literal["laplace"] = "laplace"

    def __init__(
        self, *, epsilon: Number, sensitivity: int, random_state: RandomSource = None
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = 0.0
        self.sensitivity = _integer_sensitivity(sensitivity)
        # a = ε/Δ; p = exp(-a). Closed forms below use a and expm1 so that p ~ 1 - 1e-9
        # (Δ ~ 2^30 grid steps) keeps full precision.
        self._a = self.epsilon / sensitivity if sensitivity else math.inf
        self.p = math.exp(-self._a)
        self.scale = sensitivity / self.epsilon  # Δ/ε, the continuous Laplace scale it mimics
        self._scale = Fraction(sensitivity) / Fraction(self.epsilon) if sensitivity else None
        self._rng = resolve_rng(random_state)

    @property
    def std(self) -> float:
        """Standard deviation of the noise, sqrt(2p) / (1 - p)."""
        if self.sensitivity == 0:
            return 0.0
        return math.sqrt(2.0 * self.p) / -math.expm1(-self._a)

    def randomise(self, value: int) -> int:
        """Return ``value`` plus one integer draw of the discrete Laplace noise."""
        if self._scale is None:
            return int(value)
        return int(value) + sample_discrete_laplace(self._rng, self._scale)

    def coverage(self, halfwidth: int) -> float:
        """Exact P(|noise| <= halfwidth) = 1 - 2 p^(halfwidth + 1) / (1 + p)."""
        if self.sensitivity == 0:
            return 1.0
        return 1.0 - 2.0 * math.exp(-self._a * (halfwidth + 1)) / (1.0 + self.p)

    def ci95_halfwidth(self) -> int:
        """Smallest integer k with P(|noise| <= k) >= 0.95 (exact, from the pmf).

        Because the noise is integer, the coverage is at least 95%, and above it when ε is large
        (e.g. 96.2% at ε = 0.5, sensitivity 1); ``coverage(k)`` gives the exact figure.
        """
        if self.sensitivity == 0:
            return 0
        k = max(0, math.ceil(-math.log(0.025 * (1.0 + self.p)) / self._a) - 1)
        # Guard the closed form against floating-point rounding on either side.
        while k > 0 and self.coverage(k - 1) >= 0.95:
            k -= 1
        while self.coverage(k) < 0.95:
            k += 1
        return k


class DiscreteGaussianNoise:
    """The discrete Gaussian mechanism N_Z(0, σ²) for integer queries (Canonne, Kamath &
    Steinke 2020), drawn exactly (``discrete.sample_discrete_gaussian``).

    Guarantee: (ε, δ)-differential privacy for an integer query whose sensitivity (add/remove
    of one privacy unit) is at most ``sensitivity`` (CKS Theorem 7, evaluated by
    ``discrete.calibrate_discrete_gaussian``). ``noise_multiplier`` = σ/Δ is at least the
    analytic Gaussian's for (ε, δ), which is what the ledger's Rényi accountant composes; the
    discrete Gaussian's Rényi divergences are at most the continuous one's at the same σ/Δ.

    Raises InvalidPrivacyParameter for ε <= 0, δ outside (0, 1), or a bad sensitivity.
    """

    kind: Literal["discrete_gaussian"] = "discrete_gaussian"
    family: Literal["gaussian"] = "gaussian"

    def __init__(
        self, *, epsilon: Number, delta: Number, sensitivity: int,
        random_state: RandomSource = None,
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta, positive=True)
        self.sensitivity = _integer_sensitivity(sensitivity)
        self.sigma = (calibrate_discrete_gaussian(self.epsilon, self.delta, sensitivity)
                      if sensitivity else 0.0)
        self.scale = self.sigma
        self.noise_multiplier = (self.sigma / sensitivity if sensitivity
                                 else analytic_gaussian_multiplier(self.epsilon, self.delta))
        self._sigma = Fraction(self.sigma)
        self._rng = resolve_rng(random_state)

    @property
    def std(self) -> float:
        """Standard deviation of the noise (at most σ)."""
        return discrete_gaussian_std(self.sigma) if self.sigma else 0.0

    def randomise(self, value: int) -> int:
        """Return ``value`` plus one integer draw of N_Z(0, σ²)."""
        if not self.sigma:
            return int(value)
        return int(value) + sample_discrete_gaussian(self._rng, self._sigma)

    def coverage(self, halfwidth: int) -> float:
        """P(|noise| <= halfwidth): exact for σ <= 4096, a lower bound (within ~1/σ) above."""
        if not self.sigma:
            return 1.0
        return discrete_gaussian_coverage(self.sigma, halfwidth)

    def ci95_halfwidth(self) -> int:
        """Smallest integer k (up to the bound's slack for σ > 4096) with coverage(k) >= 0.95."""
        if not self.sigma:
            return 0
        k = max(0, math.floor(Z95 * self.sigma) - 2)
        step = 1
        while self.coverage(k) < 0.95:
            k += step
            step *= 2  # at huge σ the bound's slack is ~1/σ of k: get there in a few steps
        while k > 0 and self.coverage(k - 1) >= 0.95 and self.sigma <= 4096:
            k -= 1
        return k


IntegerNoise = DiscreteLaplaceNoise | DiscreteGaussianNoise


def integer_noise(
    mechanism: NoiseKind, *, epsilon: Number, delta: Number, sensitivity: int,
    random_state: RandomSource = None,
) -> IntegerNoise:
    """The integer mechanism named by ``mechanism`` ("laplace": discrete Laplace; "gaussian":
    discrete Gaussian). ``delta`` is used only by the Gaussian."""
    if mechanism == "gaussian":
        return DiscreteGaussianNoise(epsilon=epsilon, delta=delta, sensitivity=sensitivity,
                                     random_state=random_state)
    return DiscreteLaplaceNoise(epsilon=epsilon, sensitivity=sensitivity,
                                random_state=random_state)


class GridNoise:
    """Integer noise on a public grid: a real-valued release k·γ from integer k.

    The caller hands over ``units``, an exact integer whose sensitivity in grid steps is
    ``unit_sensitivity``; ``randomise_units`` adds the integer noise, ``to_value`` maps back.
    ``scale``/``std`` are in the value's units (grid steps times γ); ``family`` names the
    continuous law it follows to within one grid step ("laplace" or "gaussian"), which is what
    the ratio intervals of ``intervals`` assume. ``interval_scale`` is ``scale`` widened by four
    grid steps' worth (relative 4/scale-in-steps, ~1e-8 on the default grids) so that quantiles
    of the continuous law also cover the discrete one.
    """

    def __init__(self, noise: IntegerNoise, grid: float) -> None:
        self.noise = noise
        self.grid = grid
        self.epsilon, self.delta = noise.epsilon, noise.delta
        self.family = noise.family
        self.kind = noise.family  # the ratio intervals' name for the law
        self.sensitivity = noise.sensitivity * grid
        self.scale = noise.scale * grid
        steps = noise.scale
        self.interval_scale = self.scale * (1.0 + 4.0 / steps) if steps else 0.0
        self.std = noise.std * grid

    def randomise_units(self, units: int) -> int:
        return self.noise.randomise(units)

    def to_value(self, units: int) -> float:
        """k·γ: exact for |k| < 2^53 (γ is a power of two); a fixed function of k always."""
        return _finite(float(units) * self.grid if abs(units) < 1 << 1000 else
                       math.copysign(math.inf, units))

    def ci95_halfwidth_units(self) -> int:
        return self.noise.ci95_halfwidth()

    def ci95_halfwidth(self) -> float:
        """Half-width in the value's units with coverage >= 95% (exact for the discrete law)."""
        return self.noise.ci95_halfwidth() * self.grid


def _finite(value: float) -> float:
    """Saturate at the largest finite float: post-processing, so privacy is unaffected, and no
    answer is ever Infinity (only reached by absurd noise draws on absurd bounds)."""
    return max(-1.7976931348623157e308, min(1.7976931348623157e308, value))


class _RealValued(GridNoise):
    """A float-safe mechanism for a real-valued query with real ``sensitivity``: the value is
    rounded to the grid (nearest), which can move two neighbours' values apart by one more
    grid step, so the integer sensitivity is floor(sensitivity/γ) + 1."""

    def __init__(self, noise_for: type[IntegerNoise], *, epsilon: Number, delta: Number | None,
                 sensitivity: Number, grid: float | None, random_state: RandomSource) -> None:
        real = check_sensitivity(sensitivity)
        self.grid = grid if grid is not None else (grid_for(real) if real > 0 else 1.0)
        units = math.floor(real / self.grid) + 1 if real > 0 else 0
        rng: Rng = resolve_rng(random_state)
        if noise_for is DiscreteGaussianNoise:
            assert delta is not None
            noise: IntegerNoise = DiscreteGaussianNoise(epsilon=epsilon, delta=delta,
                                                        sensitivity=units, random_state=rng)
        else:
            noise = DiscreteLaplaceNoise(epsilon=epsilon, sensitivity=units, random_state=rng)
        super().__init__(noise, self.grid)

    def randomise(self, value: float) -> float:
        """Round ``value`` to the grid, add the integer noise, return the grid value."""
        units = round(float(value) / self.grid)
        return self.to_value(self.randomise_units(units))


class LaplaceNoise(_RealValued):
    """Float-safe Laplace-type mechanism for a real value: discrete Laplace on the grid.

    Guarantee: ε-DP for a real-valued query of L1 sensitivity <= ``sensitivity``. The noise
    is discrete Laplace with scale ≈ sensitivity/ε (one grid step more in the sensitivity for
    the rounding); every output is a multiple of ``grid`` (default ``grid_for(sensitivity)``).
    """

    def __init__(self, *, epsilon: Number, sensitivity: Number, grid: float | None = None,
                 random_state: RandomSource = None) -> None:
        super().__init__(DiscreteLaplaceNoise, epsilon=epsilon, delta=None,
                         sensitivity=sensitivity, grid=grid, random_state=random_state)


class GaussianNoise(_RealValued):
    """Float-safe Gaussian mechanism for a real value: the discrete Gaussian on the grid.

    Guarantee: (ε, δ)-DP for a real-valued query of sensitivity <= ``sensitivity``; σ in grid
    steps from ``calibrate_discrete_gaussian`` (≈ the analytic Gaussian's σ, never below it).
    """

    def __init__(self, *, epsilon: Number, delta: Number, sensitivity: Number,
                 grid: float | None = None, random_state: RandomSource = None) -> None:
        super().__init__(DiscreteGaussianNoise, epsilon=epsilon, delta=delta,
                         sensitivity=sensitivity, grid=grid, random_state=random_state)
        assert isinstance(self.noise, DiscreteGaussianNoise)
        self.noise_multiplier = self.noise.noise_multiplier


def calibrate_gaussian_sigma(epsilon: Number, delta: Number, sensitivity: Number) -> float:
    """Analytic Gaussian σ (Balle & Wang 2018) for (ε, δ)-DP at L2 ``sensitivity``.

    The continuous mechanism's σ (``discrete.analytic_gaussian_multiplier``, checked against
    diffprivlib's ``GaussianAnalytic`` in the tests); ``σ / sensitivity`` is the noise multiplier
    the RDP accountant composes, and a lower bound on every discrete Gaussian's here. Raises
    InvalidPrivacyParameter for ε <= 0, δ outside (0, 1), or a negative sensitivity.
    """
    eps = check_epsilon(epsilon)
    dlt = check_delta(delta, positive=True)
    return analytic_gaussian_multiplier(eps, dlt) * check_sensitivity(sensitivity)


def grid_noise(
    mechanism: NoiseKind,
    *,
    epsilon: Number,
    delta: Number,
    unit_sensitivity: int,
    grid: float,
    random_state: RandomSource = None,
) -> GridNoise:
    """Integer noise at ``unit_sensitivity`` grid steps on ``grid``; see ``GridNoise``."""
    return GridNoise(integer_noise(mechanism, epsilon=epsilon, delta=delta,
                                   sensitivity=unit_sensitivity, random_state=random_state),
                     grid)
