"""Additive noise mechanisms, built on diffprivlib's mechanisms (never its tools).

Each class validates keyword-only ``epsilon``/``delta``/``sensitivity`` in its constructor, draws
from a CSPRNG unless a ``random_state`` is injected, and knows its own noise law exactly, so the
aggregates can state a noise standard deviation and an exact 95% interval without simulation.

Sensitivities are for add/remove of one privacy unit: L1 for the Laplace-type mechanisms,
L2 for the Gaussian.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist
from typing import Literal

from diffprivlib.mechanisms import GaussianAnalytic, Geometric, Laplace

from .errors import InvalidPrivacyParameter
from .randomness import RandomSource, resolve_rng
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


class LaplaceNoise:
    """The Laplace mechanism: ``value + Lap(b)`` with ``b = sensitivity / epsilon``.

    Guarantee: ε-differential privacy for a real-valued query whose L1 sensitivity (add/remove
    of one privacy unit) is at most ``sensitivity``. Units of ``b`` are those of the value.

    Raises InvalidPrivacyParameter for a non-finite or non-positive ε or a negative sensitivity.
    """

    kind: Literal["laplace"] = "laplace"

    def __init__(
        self, *, epsilon: Number, sensitivity: Number, random_state: RandomSource = None
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = 0.0
        self.sensitivity = check_sensitivity(sensitivity)
        self.scale = self.sensitivity / self.epsilon
        self._mechanism = Laplace(
            epsilon=self.epsilon,
            delta=0.0,
            sensitivity=self.sensitivity,
            random_state=resolve_rng(random_state),
        )

    @property
    def std(self) -> float:
        """Standard deviation of the noise, sqrt(2)·b."""
        return math.sqrt(2.0) * self.scale

    def randomise(self, value: float) -> float:
        """Return ``value`` plus one draw of Lap(b)."""
        return float(self._mechanism.randomise(float(value)))

    def ci95_halfwidth(self) -> float:
        """Half-width t with P(|noise| <= t) = 0.95 exactly: b·ln 20."""
        return self.scale * LN20


class DiscreteLaplaceNoise:
    """The geometric (discrete Laplace) mechanism for integer queries such as counts.

    Adds integer noise Z with P(Z = k) = (1 - p)/(1 + p) · p^|k|, p = exp(-ε / sensitivity)
    (diffprivlib's ``Geometric``). Guarantee: ε-differential privacy for an integer query whose
    L1 sensitivity (add/remove of one privacy unit) is at most ``sensitivity``.

    Raises InvalidPrivacyParameter for a bad ε or a sensitivity that is not an integer >= 0.
    """

    kind: Literal["discrete_laplace"] = "discrete_laplace"

    def __init__(
        self, *, epsilon: Number, sensitivity: int, random_state: RandomSource = None
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = 0.0
        if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or sensitivity < 0:
            # Geometric noise only protects integer-valued queries with integer sensitivity.
            raise InvalidPrivacyParameter(
                f"sensitivity must be an integer >= 0 for discrete noise, got {sensitivity!r}"
            )
        self.sensitivity = sensitivity
        self.p = math.exp(-self.epsilon / sensitivity) if sensitivity else 0.0
        self._mechanism = Geometric(
            epsilon=self.epsilon, sensitivity=sensitivity, random_state=resolve_rng(random_state)
        )

    @property
    def std(self) -> float:
        """Standard deviation of the noise, sqrt(2p) / (1 - p)."""
        return math.sqrt(2.0 * self.p) / (1.0 - self.p)

    def randomise(self, value: int) -> int:
        """Return ``value`` plus one integer draw of the discrete Laplace noise."""
        return int(self._mechanism.randomise(int(value)))

    def coverage(self, halfwidth: int) -> float:
        """Exact P(|noise| <= halfwidth) = 1 - 2 p^(halfwidth + 1) / (1 + p)."""
        return 1.0 - 2.0 * self.p ** (halfwidth + 1) / (1.0 + self.p)

    def ci95_halfwidth(self) -> int:
        """Smallest integer k with P(|noise| <= k) >= 0.95 (exact, from the pmf).

        Because the noise is integer, the coverage is at least 95%, and above it when ε is large
        (e.g. 96.2% at ε = 0.5, sensitivity 1); ``coverage(k)`` gives the exact figure.
        """
        if self.p == 0.0:
            return 0
        k = max(0, math.ceil(math.log(0.025 * (1.0 + self.p)) / math.log(self.p)) - 1)
        # Guard the closed form against floating-point rounding on either side.
        while k > 0 and self.coverage(k - 1) >= 0.95:
            k -= 1
        while self.coverage(k) < 0.95:
            k += 1
        return k


@lru_cache(maxsize=1024)
def _unit_sigma(epsilon: float, delta: float) -> float:
    # diffprivlib's analytic calibration is a ~1 ms bisection; σ is linear in the sensitivity,
    # so computing it once per (ε, δ) at sensitivity 1 and scaling is exact and fast.
    return math.sqrt(float(GaussianAnalytic(epsilon=epsilon, delta=delta, sensitivity=1.0)
                           .variance(0.0)))


def calibrate_gaussian_sigma(epsilon: Number, delta: Number, sensitivity: Number) -> float:
    """Analytic Gaussian σ (Balle & Wang 2018) for (ε, δ)-DP at L2 ``sensitivity``.

    Same value as diffprivlib's ``GaussianAnalytic``; ``σ / sensitivity`` is the noise multiplier
    the RDP accountant needs. Raises InvalidPrivacyParameter for ε <= 0, δ outside (0, 1), or a
    negative sensitivity.
    """
    eps = check_epsilon(epsilon)
    dlt = check_delta(delta, positive=True)
    return _unit_sigma(eps, dlt) * check_sensitivity(sensitivity)


class _CachedGaussianAnalytic(GaussianAnalytic):  # type: ignore[misc]  # diffprivlib is untyped
    """diffprivlib's analytic Gaussian with σ taken from the per-(ε, δ) cache."""

    def _find_scale(self) -> float:
        return _unit_sigma(float(self.epsilon), float(self.delta)) * float(self.sensitivity)


class GaussianNoise:
    """The analytic Gaussian mechanism: ``value + N(0, σ²)``, σ calibrated by Balle & Wang.

    Guarantee: (ε, δ)-differential privacy for a query (scalar or vector) whose L2 sensitivity
    (add/remove of one privacy unit) is at most ``sensitivity``. ``noise_multiplier`` is
    σ / sensitivity, the quantity Rényi-DP accounting composes.

    Raises InvalidPrivacyParameter for ε <= 0, δ outside (0, 1), or a negative sensitivity.
    """

    kind: Literal["gaussian"] = "gaussian"

    def __init__(
        self,
        *,
        epsilon: Number,
        delta: Number,
        sensitivity: Number,
        random_state: RandomSource = None,
    ) -> None:
        self.epsilon = check_epsilon(epsilon)
        self.delta = check_delta(delta, positive=True)
        self.sensitivity = check_sensitivity(sensitivity)
        self._mechanism = _CachedGaussianAnalytic(
            epsilon=self.epsilon,
            delta=self.delta,
            sensitivity=self.sensitivity,
            random_state=resolve_rng(random_state),
        )
        self.noise_multiplier = _unit_sigma(self.epsilon, self.delta)
        self.scale = self.noise_multiplier * self.sensitivity

    @property
    def std(self) -> float:
        """Standard deviation of the noise, σ."""
        return self.scale

    def randomise(self, value: float) -> float:
        """Return ``value`` plus one draw of N(0, σ²)."""
        return float(self._mechanism.randomise(float(value)))

    def ci95_halfwidth(self) -> float:
        """Half-width with P(|noise| <= t) = 0.95 exactly: 1.96·σ."""
        return Z95 * self.scale

    def rounded_ci95_halfwidth(self) -> int:
        """For ``round(value + noise)`` with integer ``value``: the smallest integer k with
        P(|round(noise)| <= k) = P(|noise| < k + 1/2) >= 0.95."""
        return max(0, math.ceil(Z95 * self.scale - 0.5))

    def rounded_coverage(self, halfwidth: int) -> float:
        """Exact P(|round(noise)| <= halfwidth)."""
        if self.scale == 0:
            return 1.0
        return 2.0 * NormalDist().cdf((halfwidth + 0.5) / self.scale) - 1.0


RealNoise = LaplaceNoise | GaussianNoise


def real_noise(
    mechanism: NoiseKind,
    *,
    epsilon: Number,
    delta: Number,
    sensitivity: Number,
    random_state: RandomSource = None,
) -> RealNoise:
    """The real-valued mechanism named by ``mechanism``.

    ``delta`` is used only by the Gaussian; callers check the pair with ``check_mechanism_delta``.
    """
    if mechanism == "gaussian":
        return GaussianNoise(
            epsilon=epsilon, delta=delta, sensitivity=sensitivity, random_state=random_state
        )
    return LaplaceNoise(epsilon=epsilon, sensitivity=sensitivity, random_state=random_state)
