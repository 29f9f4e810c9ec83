"""Bad privacy parameters and domains fail loudly, before any noise is drawn."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from mechanisms import (
    DiscreteLaplaceNoise,
    GaussianNoise,
    InvalidDomain,
    InvalidPrivacyParameter,
    LaplaceNoise,
    MechanismError,
    accuracy_for,
    calibrate_gaussian_sigma,
    privacy_events_for,
    release_aggregate,
    release_count,
    release_histogram,
    release_mean,
    release_quantile,
    release_sum,
)

BAD_EPSILONS = [0, -1.0, math.nan, math.inf, -math.inf, "1", None, True, Decimal("NaN")]


@pytest.mark.parametrize("epsilon", BAD_EPSILONS)
def test_epsilon_must_be_finite_and_positive(epsilon: object) -> None:
    with pytest.raises(InvalidPrivacyParameter, match="epsilon"):
        release_count(5, epsilon=epsilon)  # type: ignore[arg-type]
    with pytest.raises(InvalidPrivacyParameter, match="epsilon"):
        LaplaceNoise(epsilon=epsilon, sensitivity=1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidPrivacyParameter, match="epsilon"):
        release_mean([1.0], lower=0, upper=1, epsilon=epsilon)  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_delta_must_lie_in_zero_one(delta: float) -> None:
    with pytest.raises(InvalidPrivacyParameter, match="delta"):
        release_sum([1.0], lower=0, upper=1, epsilon=1.0, delta=delta, mechanism="gaussian")


def test_gaussian_needs_positive_delta_and_laplace_needs_zero() -> None:
    with pytest.raises(InvalidPrivacyParameter, match=r"delta must be in \(0, 1\)"):
        GaussianNoise(epsilon=1.0, delta=0.0, sensitivity=1.0)
    with pytest.raises(InvalidPrivacyParameter, match=r"\(0, 1\)"):
        calibrate_gaussian_sigma(1.0, 0.0, 1.0)
    with pytest.raises(InvalidPrivacyParameter, match="must be 0 for the Laplace"):
        release_count(3, epsilon=1.0, delta=1e-6)
    with pytest.raises(InvalidPrivacyParameter, match="mechanism must be"):
        release_count(3, epsilon=1.0, mechanism="exponential")  # type: ignore[arg-type]


def test_sensitivity_and_contribution_bounds_are_checked() -> None:
    with pytest.raises(InvalidPrivacyParameter, match="sensitivity"):
        LaplaceNoise(epsilon=1.0, sensitivity=-1.0)
    with pytest.raises(InvalidPrivacyParameter, match="integer"):
        DiscreteLaplaceNoise(epsilon=1.0, sensitivity=1.5)  # type: ignore[arg-type]
    for max_rows in (0, -2, 1.5, True):
        with pytest.raises(InvalidPrivacyParameter, match="max_rows"):
            release_count(3, epsilon=1.0, max_rows=max_rows)  # type: ignore[arg-type]


def test_domains_are_checked() -> None:
    with pytest.raises(InvalidDomain, match="lower bound must be < upper"):
        release_sum([1.0], lower=1, upper=1, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="finite"):
        release_mean([1.0], lower=0, upper=math.inf, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="NaN"):
        release_mean([1.0, math.nan], lower=0, upper=1, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="one-dimensional"):
        release_sum(np.ones((2, 2)), lower=0, upper=1, epsilon=1.0)
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(InvalidDomain, match="quantile level"):
            release_quantile([1.0], q=q, lower=0, upper=1, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="bins"):
        release_histogram([1.0], lower=0, upper=1, bins=0, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="row count"):
        release_count(-1, epsilon=1.0)
    with pytest.raises(InvalidDomain, match="bounds"):
        release_aggregate("mean", [1.0], epsilon=1.0)
    with pytest.raises(InvalidPrivacyParameter, match="quantile"):
        release_aggregate("quantile", [1.0], q=0.5, lower=0, upper=1, epsilon=1.0, delta=1e-6,
                          mechanism="gaussian")


def test_planning_functions_validate_like_the_releases() -> None:
    with pytest.raises(InvalidPrivacyParameter):
        privacy_events_for("mean", epsilon=Decimal(0))
    with pytest.raises(InvalidPrivacyParameter):
        accuracy_for("sum", epsilon=1.0, delta=0.0, mechanism="gaussian", lower=0, upper=1)
    with pytest.raises(InvalidDomain):
        accuracy_for("median", epsilon=1.0, lower=0, upper=1)  # type: ignore[arg-type]


def test_every_error_is_a_value_error_of_one_family() -> None:
    assert issubclass(InvalidPrivacyParameter, MechanismError)
    assert issubclass(InvalidDomain, MechanismError)
    assert issubclass(MechanismError, ValueError)


def test_decimal_parameters_are_accepted() -> None:
    released = release_count(5, epsilon=Decimal("0.5"), random_state=1)
    assert released.epsilon == 0.5
