"""Counts and histograms over public bins, with integer noise.

A count has sensitivity ``max_rows`` under add/remove of one privacy unit. A histogram (or a
group-by count) is a vector of counts over public cells; one unit's rows land in at most
``max_rows`` cells and change the vector's L1 norm (and its L2 norm) by at most ``max_rows`` in
total, so noise calibrated to sensitivity ``max_rows`` in every cell protects the whole vector
at the cost of one count: cells compose in parallel, for any ``max_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidDomain
from .noise import DiscreteGaussianNoise, DiscreteLaplaceNoise
from .randomness import RandomSource, resolve_rng
from .release import GroupedRelease, Release
from .validation import (
    NoiseKind,
    Number,
    as_values,
    check_bounds,
    check_count,
    check_max_rows,
    check_mechanism_delta,
)


class CountNoise:
    """The integer mechanism for counts of sensitivity ``max_rows``.

    "laplace" is the discrete Laplace (geometric) mechanism, ε-DP. "gaussian" is the discrete
    Gaussian (Canonne, Kamath & Steinke), (ε, δ)-DP. Both add exact integer noise, so a count's
    possible outputs are the integers whatever the data (float-safe); both are unbiased; a
    released count can be negative.
    """

    def __init__(
        self,
        *,
        epsilon: Number,
        delta: Number = 0.0,
        mechanism: NoiseKind = "laplace",
        max_rows: int = 1,
        random_state: RandomSource = None,
    ) -> None:
        rows = check_max_rows(max_rows)
        dlt = check_mechanism_delta(mechanism, delta)
        self._noise: DiscreteLaplaceNoise | DiscreteGaussianNoise
        if mechanism == "gaussian":
            self._noise = DiscreteGaussianNoise(
                epsilon=epsilon, delta=dlt, sensitivity=rows, random_state=random_state
            )
        else:
            self._noise = DiscreteLaplaceNoise(
                epsilon=epsilon, sensitivity=rows, random_state=random_state
            )
        self.halfwidth = self._noise.ci95_halfwidth()
        self.coverage = self._noise.coverage(self.halfwidth)
        self.epsilon, self.delta = self._noise.epsilon, self._noise.delta
        self.std = self._noise.std

    def release(self, n: int) -> Release:
        """Release the true count ``n`` with ``ci95`` = value ± halfwidth (exact coverage
        ``self.coverage`` >= 95%, above it only by the discreteness of the noise)."""
        true = check_count(n)
        value = self._noise.randomise(true)
        return Release(
            value=value,
            noise_scale=self.std,
            ci95=(value - self.halfwidth, value + self.halfwidth),
            epsilon=self.epsilon,
            delta=self.delta,
            grid=1.0,
        )


def release_count(
    n: int,
    *,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> Release:
    """Differentially private count of ``n`` matching rows (n itself is private).

    Guarantee: ε-DP with the discrete Laplace mechanism (``mechanism="laplace"``, δ must be 0)
    or (ε, δ)-DP with the discrete Gaussian (``"gaussian"``, 0 < δ < 1),
    under add/remove of one unit contributing at most ``max_rows`` rows (sensitivity max_rows).
    ``value`` is an int; ``noise_scale`` its noise standard deviation; ``ci95`` exact.

    Raises InvalidPrivacyParameter for bad ε/δ/mechanism/max_rows, InvalidDomain for n < 0.
    """
    return CountNoise(
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        max_rows=max_rows,
        random_state=random_state,
    ).release(n)


def release_counts(
    counts: Sequence[int] | ArrayLike,
    *,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> GroupedRelease:
    """Release a vector of true counts over public cells (histogram bins, group-by keys).

    Guarantee: the same as one ``release_count`` for the whole vector, provided one privacy unit
    has at most ``max_rows`` rows in total across all cells (see the module docstring).
    Every cell is released, zero counts included.
    """
    true = np.asarray(counts)
    if true.ndim != 1 or true.size == 0:
        raise InvalidDomain("counts must be a non-empty one-dimensional sequence")
    noise = CountNoise(
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        max_rows=max_rows,
        random_state=resolve_rng(random_state),
    )
    cells = tuple(noise.release(int(count)) for count in true)
    return GroupedRelease(cells=cells, epsilon=noise.epsilon, delta=noise.delta)


def release_histogram(
    values: ArrayLike,
    *,
    lower: Number,
    upper: Number,
    bins: int,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> GroupedRelease:
    """Noisy counts over ``bins`` equal-width public bins of [lower, upper].

    Values are clamped into the bounds first, so out-of-range values land in the end bins; the
    last bin is closed on the right. Guarantee and cost as ``release_counts``.

    Raises InvalidDomain for bad bounds, bins < 1 or NaN values.
    """
    low, high = check_bounds(lower, upper)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise InvalidDomain(f"bins must be an integer >= 1, got {bins!r}")
    counts = np.bincount(histogram_codes(values, lower=low, upper=high, bins=int(bins)),
                         minlength=int(bins))
    return release_counts(
        counts,
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        max_rows=max_rows,
        random_state=random_state,
    )


def histogram_codes(values: ArrayLike, *, lower: Number, upper: Number,
                    bins: int) -> NDArray[np.int64]:
    """The bin (0 .. bins-1) of each value clamped to [lower, upper], as ``np.histogram`` bins
    them with ``range=(lower, upper)`` (the last bin closed). Computed for all rows once, the
    codes let a filtered histogram be a weighted ``np.bincount`` over every row: the same work
    whatever the filter matches.

    Raises InvalidDomain for bad bounds, bins < 1 or NaN values.
    """
    low, high = check_bounds(lower, upper)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise InvalidDomain(f"bins must be an integer >= 1, got {bins!r}")
    x = np.clip(as_values(values), low, high)
    edges = np.linspace(low, high, int(bins) + 1)
    # numpy's own rule for equal bins: scale, truncate, then fix round-off against the edges
    codes = ((x - low) * (int(bins) / (high - low))).astype(np.int64)
    codes[codes == bins] -= 1
    codes[x < edges[codes]] -= 1
    codes[(x >= edges[codes + 1]) & (codes != bins - 1)] += 1
    return codes


def histogram_edges(lower: Number, upper: Number, bins: int) -> list[float]:
    """The public bin edges ``release_histogram`` uses (bins + 1 floats)."""
    low, high = check_bounds(lower, upper)
    return [float(edge) for edge in np.linspace(low, high, int(bins) + 1)]


def release_category_counts(
    codes: ArrayLike,
    *,
    categories: int,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> GroupedRelease:
    """Noisy counts of each public category; ``codes`` are integers in [0, categories).

    This is a group-by count over a public key. A code outside the public domain is refused
    (it means the data and the schema disagree), never silently dropped.
    Guarantee and cost as ``release_counts``.
    """
    if isinstance(categories, bool) or not isinstance(categories, int) or categories < 1:
        raise InvalidDomain(f"categories must be an integer >= 1, got {categories!r}")
    array = np.asarray(codes)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise InvalidDomain("codes must be a one-dimensional array of integers")
    if array.size and (array.min() < 0 or array.max() >= categories):
        raise InvalidDomain(f"codes must lie in [0, {categories})")
    counts = np.bincount(array.astype(np.int64), minlength=categories)
    return release_counts(
        counts,
        epsilon=epsilon,
        delta=delta,
        mechanism=mechanism,
        max_rows=max_rows,
        random_state=random_state,
    )
