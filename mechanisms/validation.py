"""Argument checks shared by every mechanism and aggregate.

Checks run before any noise is drawn, so a bad request never spends randomness or budget and
always fails with the same clear message.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Literal, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidDomain, InvalidPrivacyParameter

NoiseKind: TypeAlias = Literal["laplace", "gaussian"]
# The service holds budgets as Decimal; accept them here so it need not convert by hand.
Number: TypeAlias = float | Decimal


def _as_finite(value: object, name: str) -> float:
    # bool is an int subclass; epsilon=True is always a bug, never a number.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | np.number):
        raise InvalidPrivacyParameter(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidPrivacyParameter(f"{name} must be finite, got {value!r}")
    return number


def check_epsilon(epsilon: object) -> float:
    """Return ε as a float; ε must be finite and > 0."""
    eps = _as_finite(epsilon, "epsilon")
    if eps <= 0:
        raise InvalidPrivacyParameter(f"epsilon must be > 0, got {epsilon!r}")
    return eps


def check_delta(delta: object, *, positive: bool = False) -> float:
    """Return δ as a float in [0, 1), or in (0, 1) when ``positive`` (the Gaussian needs δ > 0)."""
    value = _as_finite(delta, "delta")
    if positive and not 0 < value < 1:
        raise InvalidPrivacyParameter(
            f"delta must be in (0, 1) for the Gaussian mechanism, got {delta!r}"
        )
    if not 0 <= value < 1:
        raise InvalidPrivacyParameter(f"delta must be in [0, 1), got {delta!r}")
    return value


def check_mechanism_delta(mechanism: str, delta: object) -> float:
    """Validate the (mechanism, δ) pair: Laplace-type mechanisms are pure ε-DP, so δ must be 0."""
    if mechanism == "gaussian":
        return check_delta(delta, positive=True)
    if mechanism == "laplace":
        if check_delta(delta) != 0:
            raise InvalidPrivacyParameter(
                "delta must be 0 for the Laplace mechanism (it is pure epsilon-DP); "
                "use mechanism='gaussian' to spend delta"
            )
        return 0.0
    raise InvalidPrivacyParameter(f"mechanism must be 'laplace' or 'gaussian', got {mechanism!r}")


def check_sensitivity(sensitivity: object) -> float:
    """Return a sensitivity as a float; it must be finite and >= 0."""
    value = _as_finite(sensitivity, "sensitivity")
    if value < 0:
        raise InvalidPrivacyParameter(f"sensitivity must be >= 0, got {sensitivity!r}")
    return value


def check_max_rows(max_rows: object) -> int:
    """Return the per-unit contribution bound; it must be an integer >= 1."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int | np.integer) or max_rows < 1:
        raise InvalidPrivacyParameter(f"max_rows must be an integer >= 1, got {max_rows!r}")
    return int(max_rows)


def check_bounds(lower: object, upper: object) -> tuple[float, float]:
    """Return public bounds (lower, upper); both finite and lower < upper."""
    values = []
    for name, bound in (("lower", lower), ("upper", upper)):
        if isinstance(bound, bool) or not isinstance(bound, int | float | Decimal | np.number):
            raise InvalidDomain(f"{name} bound must be a number, got {bound!r}")
        number = float(bound)
        if not math.isfinite(number):
            raise InvalidDomain(f"{name} bound must be finite, got {bound!r}")
        values.append(number)
    low, high = values
    if not low < high:
        raise InvalidDomain(f"lower bound must be < upper bound, got [{lower!r}, {upper!r}]")
    return low, high


def check_quantile_level(q: object) -> float:
    """Return the quantile level q in [0, 1]."""
    if isinstance(q, bool) or not isinstance(q, int | float | Decimal | np.number):
        raise InvalidDomain(f"quantile level must be a number, got {q!r}")
    level = float(q)
    if not 0 <= level <= 1:
        raise InvalidDomain(f"quantile level must be in [0, 1], got {q!r}")
    return level


def check_count(n: object) -> int:
    """Return a true row count; it must be an integer >= 0."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InvalidDomain(f"row count must be an integer >= 0, got {n!r}")
    return int(n)


def as_values(values: ArrayLike) -> NDArray[np.float64]:
    """Return the private column as a 1-D float array; NaN is refused (it has no clamped value)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidDomain(f"values must be one-dimensional, got shape {array.shape}")
    if np.isnan(array).any():
        raise InvalidDomain("values contain NaN; drop or impute them before querying")
    return array


def clamp(values: NDArray[np.float64], lower: float, upper: float) -> NDArray[np.float64]:
    """Clamp values into the public bounds: this is what bounds every row's contribution."""
    return np.clip(values, lower, upper)
