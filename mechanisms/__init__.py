"""Differential-privacy mechanisms, aggregates and accounting for privacy-api.

A pure library: it imports only the standard library, NumPy, SciPy, diffprivlib and
dp-accounting, never Flask, SQLAlchemy or ``privacy_api``.

Privacy model: neighbouring datasets differ by adding or removing one privacy unit, which
contributes at most ``max_rows`` rows (1 for record-level privacy). Column bounds and category
domains are public; values are clamped to them. The number of matching rows is private.
Noise comes from a CSPRNG unless a seeded ``random_state`` is injected (tests only). Every
released value is float-safe: integer noise, real values on public power-of-two grids (``noise``).
"""

from .accounting import (
    Composition,
    PrivacyEvent,
    PrivacySpent,
    charge,
    float_at_most,
    gaussian_event,
    total_spent,
)
from .counting import (
    CountNoise,
    histogram_codes,
    histogram_edges,
    release_category_counts,
    release_count,
    release_counts,
    release_histogram,
)
from .errors import InvalidDomain, InvalidPrivacyParameter, MechanismError
from .moments import (
    MomentStats,
    grouped_moment_stats,
    moment_stats,
    release_mean,
    release_sum,
    release_variance,
)
from .noise import (
    DiscreteGaussianNoise,
    DiscreteLaplaceNoise,
    GaussianNoise,
    LaplaceNoise,
    calibrate_gaussian_sigma,
)
from .quantile import (
    INTERVAL_KINDS,
    IntervalKind,
    QuantileIndex,
    quantile_index,
    release_quantile,
    release_quantile_indexed,
)
from .queries import (
    AGGREGATES,
    Accuracy,
    Aggregate,
    accuracy_for,
    privacy_events_for,
    release_aggregate,
    release_grouped,
)
from .randomness import RandomSource
from .release import GroupedRelease, Release

__all__ = [
    "AGGREGATES",
    "Accuracy",
    "Aggregate",
    "CountNoise",
    "DiscreteGaussianNoise",
    "DiscreteLaplaceNoise",
    "GaussianNoise",
    "GroupedRelease",
    "INTERVAL_KINDS",
    "InvalidDomain",
    "IntervalKind",
    "InvalidPrivacyParameter",
    "LaplaceNoise",
    "MechanismError",
    "MomentStats",
    "Composition",
    "PrivacyEvent",
    "PrivacySpent",
    "RandomSource",
    "Release",
    "accuracy_for",
    "calibrate_gaussian_sigma",
    "charge",
    "float_at_most",
    "gaussian_event",
    "grouped_moment_stats",
    "histogram_codes",
    "histogram_edges",
    "moment_stats",
    "privacy_events_for",
    "release_aggregate",
    "release_category_counts",
    "release_count",
    "release_counts",
    "release_grouped",
    "release_histogram",
    "release_mean",
    "release_quantile",
    "release_quantile_indexed",
    "quantile_index",
    "QuantileIndex",
    "release_sum",
    "release_variance",
    "total_spent",
]
