"""Sum, mean, variance and standard deviation of a bounded numeric column, float-safe.

Neighbouring datasets differ by adding or removing one privacy unit, which contributes at most
``max_rows`` rows. Bounds [lower, upper] are public schema; every value is clamped into them.
The number of matching rows n is private, so it is never used unnoised: means and variances
are ratios over a noisy count (diffprivlib's tools assume a public n and are not used).

Float safety (Mironov 2012; see ``noise``): every noisy component is an exact integer sum of
values quantised onto a public power-of-two grid, plus integer noise at its integer
sensitivity. With mid/half the centre/half-width of the bounds and ``MomentGrid`` the grids
(deterministic from the bounds alone), a row x (clamped) contributes

    total    t = clip(round(x / γ_t), ±T)              T = ceil(max(|lower|, |upper|) / γ_t)
    shifted  s = clip(round((x - mid) / γ_s), ±S)      S = ceil(half / γ_s)
    square   q = clip(round((x - mid)² / γ_q), 0, Q)   Q = ceil(half² / γ_q)
    count    2^30 (grid 2^-30)

and the clip makes the integer sensitivities max_rows·T, max_rows·S, max_rows·Q and
max_rows·2^30 hold whatever the floating-point rounding. Each grid puts the largest magnitude at
<= 2^30 steps, so rounding moves a row by at most 2^-31 of the bound (n·2^-31 of it over n rows,
far below the noise for any ε <= 10 and n <= 10^7) and every sum is exact in int64 (float64 up
to 2^23 rows). The count inside a mean or variance uses the same fine grid so its law, like the
others', is within one step of the continuous law the ratio intervals assume.

The released sum is k·γ_t for the noisy integer k. Means, variances and std are post-processing
of noisy integers (so their set of possible outputs is already data-independent) and are
rounded onto the public grid γ_s (mean, std) or γ_q (variance) as well, so every released value,
and every interval end, is a multiple of the grid stated in the answer.

Shifting by the public midpoint bounds a row's move by half the bounds' width, whatever their
offset (bounds [100, 110] give sensitivity 5, not 110), hence far less noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidDomain
from .intervals import (
    FloatArray,
    PivotCells,
    accepted_hull,
    cell_edges,
    ratio_interval,
)
from .noise import GRID_BITS, GridNoise, grid_for, grid_noise
from .randomness import RandomSource, resolve_rng
from .release import Release
from .validation import (
    NoiseKind,
    Number,
    as_values,
    check_bounds,
    check_epsilon,
    check_max_rows,
    check_mechanism_delta,
    clamp,
)

# Budget shares. Dyadic fractions keep ε·share exact both in binary floats and in Decimal, so
# the ledger's split (see queries.privacy_events_for) is the one the mechanisms used.
MEAN_SHARES = {"count": 0.5, "sum": 0.5}
# The sum of squares carries the variance; its noise dominates the error, so it gets half.
VARIANCE_SHARES = {"count": 0.25, "sum": 0.25, "sum_of_squares": 0.5}

COUNT_GRID = math.ldexp(1.0, -GRID_BITS)
COUNT_UNITS = 1 << GRID_BITS
# Sums of per-row units (<= 2^30 each) are exact in int64 below this many rows.
MAX_EXACT_ROWS = 1 << 32


@dataclass(frozen=True, slots=True)
class MomentGrid:
    """The public grids and per-row unit bounds for one column's bounds (see the module doc)."""

    lower: float
    upper: float
    mid: float
    half: float
    total: float
    total_units: int
    shift: float
    shift_units: int
    square: float
    square_units: int


@lru_cache(maxsize=256)
def _grid(low: float, high: float) -> MomentGrid:
    check_release_bounds(low, high)
    mid, half = low / 2.0 + high / 2.0, high / 2.0 - low / 2.0
    top = max(abs(low), abs(high))
    total, shift, square = grid_for(top), grid_for(half), grid_for(half * half)
    return MomentGrid(low, high, mid, half, total, math.ceil(top / total), shift,
                      math.ceil(half / shift), square, math.ceil(half * half / square))


def moment_grid(lower: Number, upper: Number) -> MomentGrid:
    """The MomentGrid of public bounds. Raises InvalidDomain as ``check_release_bounds``."""
    low, high = check_bounds(lower, upper)
    return _grid(low, high)


def check_release_bounds(lower: Number, upper: Number) -> tuple[float, float]:
    """Public bounds every real-valued release can use: finite, lower < upper, with a finite
    width (upper - lower) and a finite squared half-width (variance), and not so small that a
    grid would underflow. Datasets should be refused at creation when this fails, since no sum,
    mean or variance could be answered on them."""
    low, high = check_bounds(lower, upper)
    width = high - low
    if not math.isfinite(width):
        raise InvalidDomain(f"bounds [{low!r}, {high!r}] are too far apart: their width "
                            "overflows a float")
    half = high / 2.0 - low / 2.0
    if not math.isfinite(half * half):
        raise InvalidDomain(f"bounds [{low!r}, {high!r}] are too far apart: the variance's "
                            "bound (half the width, squared) overflows a float")
    for magnitude in (max(abs(low), abs(high)), half, half * half):
        grid_for(magnitude) if magnitude > 0 else None
    if half * half == 0.0:
        raise InvalidDomain(f"bounds [{low!r}, {high!r}] are too close for a float-safe grid")
    return low, high


@dataclass(frozen=True, slots=True)
class QuantisedValues:
    """Per-row grid units of clamped values (exact integers stored as float64, |u| <= 2^30):
    ``total``, ``shifted`` and ``squares`` as in the module docstring."""

    total: NDArray[np.float64]
    shifted: NDArray[np.float64]
    squares: NDArray[np.float64]


UNIT_KINDS = ("total", "shifted", "squares")


def quantise_unit(values: ArrayLike, grid: MomentGrid, kind: str) -> NDArray[np.float64]:
    """One kind of per-row unit (``total``, ``shifted`` or ``squares``) of ``values`` on
    ``grid``, clamped first: exactly the matching field of ``quantise``. A caller that reads
    only one kind, or works through a column in chunks, computes just that."""
    x = clamp(as_values(values), grid.lower, grid.upper)
    if kind == "total":
        return np.clip(np.rint(x / grid.total), -grid.total_units, grid.total_units)
    y = x - grid.mid
    if kind == "shifted":
        return np.clip(np.rint(y / grid.shift), -grid.shift_units, grid.shift_units)
    if kind == "squares":
        with np.errstate(over="ignore"):  # a square just above half² overflows only to be clipped
            return np.clip(np.rint(y * y / grid.square), 0.0, grid.square_units)
    raise ValueError(f"unit kind must be one of {UNIT_KINDS}, got {kind!r}")


def quantise(values: ArrayLike, grid: MomentGrid) -> QuantisedValues:
    """The per-row units of ``values`` on ``grid`` (clamped to its bounds first)."""
    x = as_values(values)
    return QuantisedValues(*(quantise_unit(x, grid, kind) for kind in UNIT_KINDS))


@dataclass(frozen=True, slots=True)
class MomentStats:
    """What sums, means and variances read from the data: the count of rows and the exact
    integer sums of their grid units (``quantise``) under one set of public bounds.

    Passing these instead of the values lets a caller reduce many groups in one vectorised pass
    (``grouped_moment_stats``). A caller that knows which aggregate it serves may leave the sums
    that aggregate does not read at 0 (sum reads ``total``; mean ``shifted``; variance and std
    ``shifted`` and ``squares``).
    """

    count: int
    total: int
    shifted: int
    squares: int


def _exact_sum(units: NDArray[np.float64]) -> int:
    return int(np.sum(units.astype(np.int64)))


def moment_stats(values: ArrayLike, lower: Number, upper: Number) -> MomentStats:
    """The MomentStats of ``values`` under the public bounds."""
    units = quantise(values, moment_grid(lower, upper))
    if units.total.size >= MAX_EXACT_ROWS:
        raise InvalidDomain("too many rows for exact 64-bit sums")
    return MomentStats(int(units.total.size), _exact_sum(units.total), _exact_sum(units.shifted),
                       _exact_sum(units.squares))


def grouped_moment_stats(values: ArrayLike, codes: ArrayLike, groups: int, lower: Number,
                         upper: Number) -> list[MomentStats]:
    """MomentStats of each group 0..groups-1 (``codes[i]`` is row i's group) in O(rows)."""
    units = quantise(values, moment_grid(lower, upper))
    index = np.asarray(codes, dtype=np.int64)
    if index.shape != units.total.shape:
        raise InvalidDomain("codes and values must have the same length")
    if index.size and (index.min() < 0 or index.max() >= groups):
        raise InvalidDomain(f"codes must lie in [0, {groups})")
    counts = np.bincount(index, minlength=groups)
    sums = []
    for column in (units.total, units.shifted, units.squares):
        totals = np.zeros(groups, dtype=np.int64)
        np.add.at(totals, index, column.astype(np.int64))  # exact integer sums
        sums.append(totals)
    return [MomentStats(int(c), int(t), int(s), int(q))
            for c, t, s, q in zip(counts, *sums, strict=True)]


def _stats(values: ArrayLike | MomentStats, grid: MomentGrid) -> MomentStats:
    return values if isinstance(values, MomentStats) else moment_stats(values, grid.lower,
                                                                       grid.upper)


def on_grid(value: float, grid: float, low: float, high: float) -> float:
    """``value`` rounded to the nearest multiple of ``grid`` within [low, high] (post-processing
    of noisy integers: it keeps every released float on the public grid)."""
    lowest, highest = math.ceil(low / grid) * grid, math.floor(high / grid) * grid
    return min(max(round(value / grid) * grid, lowest), highest)


def _outward(interval: tuple[float, float], grid: float, low: float,
             high: float) -> tuple[float, float]:
    """An interval widened onto the grid (its coverage can only grow), within [low, high]."""
    lowest, highest = math.ceil(low / grid) * grid, math.floor(high / grid) * grid
    return (min(max(math.floor(interval[0] / grid) * grid, lowest), highest),
            min(max(math.ceil(interval[1] / grid) * grid, lowest), highest))


def release_sum(
    values: ArrayLike | MomentStats,
    *,
    lower: Number,
    upper: Number,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> Release:
    """Differentially private, float-safe sum of ``values`` clamped to [lower, upper].

    Releases k·γ_t, k = Σ t_i + Z with Z discrete Laplace (ε-DP; δ must be 0) or discrete
    Gaussian ((ε, δ)-DP) at integer sensitivity max_rows·T (add/remove of one privacy unit
    with at most ``max_rows`` rows). ``grid`` is γ_t; ``ci95`` is (k ± h)·γ_t with h the
    discrete law's exact 95% half-width (coverage >= 95%, exactly 95% up to one grid step).

    Raises InvalidPrivacyParameter (ε, δ, mechanism, max_rows) or InvalidDomain (bounds, NaN).
    """
    grid = moment_grid(lower, upper)
    rows = check_max_rows(max_rows)
    dlt = check_mechanism_delta(mechanism, delta)
    stats = _stats(values, grid)
    noise = grid_noise(mechanism, epsilon=epsilon, delta=dlt,
                       unit_sensitivity=rows * grid.total_units, grid=grid.total,
                       random_state=random_state)
    k = noise.randomise_units(stats.total)
    halfwidth = noise.ci95_halfwidth_units()
    return Release(
        value=noise.to_value(k),
        noise_scale=noise.std,
        ci95=(noise.to_value(k - halfwidth), noise.to_value(k + halfwidth)),
        epsilon=noise.epsilon,
        delta=noise.delta,
        grid=grid.total,
    )


class _MomentNoises:
    """The noisy components of a mean or variance, drawn from one generator, each an integer
    mechanism on its own grid: name -> (grid, per-row units)."""

    def __init__(
        self,
        shares: dict[str, float],
        units: dict[str, tuple[float, int]],
        *,
        epsilon: Number,
        delta: float,
        mechanism: NoiseKind,
        rows: int,
        random_state: RandomSource,
    ) -> None:
        eps = check_epsilon(epsilon)
        rng = resolve_rng(random_state)
        self.noises: dict[str, GridNoise] = {
            name: grid_noise(
                mechanism,
                epsilon=eps * share,
                delta=delta * share,
                unit_sensitivity=rows * units[name][1],
                grid=units[name][0],
                random_state=rng,
            )
            for name, share in shares.items()
        }
        self.epsilon, self.delta = eps, delta

    def __getitem__(self, name: str) -> GridNoise:
        return self.noises[name]

    def noisy(self, name: str, units: int) -> float:
        """The component's noisy value in its own units (a grid multiple)."""
        noise = self.noises[name]
        return noise.to_value(noise.randomise_units(units))


def _prepare(
    values: ArrayLike | MomentStats, lower: Number, upper: Number, max_rows: int, mechanism: str,
    delta: Number,
) -> tuple[MomentStats, MomentGrid, int, float]:
    grid = moment_grid(lower, upper)
    rows, dlt = check_max_rows(max_rows), check_mechanism_delta(mechanism, delta)
    return _stats(values, grid), grid, rows, dlt


def release_mean(
    values: ArrayLike | MomentStats,
    *,
    lower: Number,
    upper: Number,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    random_state: RandomSource = None,
) -> Release:
    """Differentially private, float-safe mean of ``values`` clamped to [lower, upper], with
    private n.

    Shifted-sum estimator: release S = γ_s·(Σ s_i + Z) (sensitivity max_rows·S steps) and
    N = 2^-30·(n·2^30 + Z') (sensitivity max_rows·2^30 steps), each with half of ε (and of δ),
    integer noise on both; answer mid + S / max(N, 1), clamped into the bounds and rounded onto
    the grid γ_s (``grid`` in the answer).

    Guarantee: ε-DP (Laplace) or (ε, δ)-DP (Gaussian) by basic composition of the two halves.
    ``ci95`` inverts the pivot S - c·N (see ``intervals``), with the continuous law's quantile
    widened by four grid steps per term; coverage 95% for any n >= 1 (tests).

    Raises InvalidPrivacyParameter or InvalidDomain as ``release_sum``.
    """
    stats, grid, rows, dlt = _prepare(values, lower, upper, max_rows, mechanism, delta)
    mid, half = grid.mid, grid.half
    noises = _MomentNoises(
        MEAN_SHARES,
        {"count": (COUNT_GRID, COUNT_UNITS), "sum": (grid.shift, grid.shift_units)},
        epsilon=epsilon,
        delta=dlt,
        mechanism=mechanism,
        rows=rows,
        random_state=random_state,
    )
    noisy_count = noises.noisy("count", stats.count * COUNT_UNITS)
    noisy_sum = noises.noisy("sum", stats.shifted)
    denominator = max(noisy_count, 1.0)
    centred = min(max(noisy_sum / denominator, -half), half)

    interval = _finite_or(lambda: ratio_interval(
        noisy_sum,
        noisy_count,
        family=noises["sum"].family,
        total_scale=noises["sum"].interval_scale,
        count_scale=noises["count"].interval_scale,
        c_lower=-half,
        c_upper=half,
        level=0.95,
    ), (-half, half))
    low, high = _hull_with(interval, centred)
    # Delta-method standard error of S/N, from released quantities only.
    std_error = _finite_cap(
        math.hypot(noises["sum"].std, centred * noises["count"].std) / denominator, half)
    return Release(
        value=on_grid(mid + centred, grid.shift, grid.lower, grid.upper),
        noise_scale=on_grid(min(std_error, half), grid.shift, 0.0, half),
        ci95=_outward((mid + low, mid + high), grid.shift, grid.lower, grid.upper),
        epsilon=noises.epsilon,
        delta=noises.delta,
        grid=grid.shift,
    )


def release_variance(
    values: ArrayLike | MomentStats,
    *,
    lower: Number,
    upper: Number,
    epsilon: Number,
    delta: Number = 0.0,
    mechanism: NoiseKind = "laplace",
    max_rows: int = 1,
    std: bool = False,
    random_state: RandomSource = None,
) -> Release:
    """Differentially private, float-safe population variance (or, with ``std=True``,
    standard deviation).

    Releases N, S1 = γ_s·(Σ s_i + Z1) and S2 = γ_q·(Σ q_i + Z2) (integer noise on each, see the
    module docstring) with ε (and δ) split 1/4, 1/4, 1/2 (``VARIANCE_SHARES``); answers
    S2/N' - (S1/N')² with N' = max(N, 1), clamped into [0, half²] (half = (upper - lower)/2,
    the largest variance on the bounds) and rounded onto the grid γ_q (std: its square root,
    onto γ_s); ``grid`` in the answer says which.

    Guarantee: ε-DP (Laplace) or (ε, δ)-DP (Gaussian) by basic composition of the three parts.

    ``ci95``, calibrated: the exact variance pivot evaluated at the estimated mean (see
    ``_plugin_variance_interval``); measured coverage 94-96% (n >= 100, Laplace, ε = 1;
    n >= 300, Gaussian, ε = 1, δ = 1e-6), not guaranteed for every dataset. When the count is
    too noisy for that approximation (noise std > 6% of the noisy count) ``ci95`` is the
    worst-case interval below and over-covers (95.5-98.5% measured).
    ``ci95_worst_case``: the same pivot profiled over a 99.5% interval for the mean (union
    bound; see ``_variance_interval``): coverage >= 95% for every dataset with n >= 1, 95.5-98.5%
    in practice. It is always present (equal to ``ci95`` when ``ci95`` already is that
    interval), so an empty filter answers in the same shape as any other. Both come from the
    same released values, so the second costs no budget. For std all endpoints are
    square-rooted.

    Raises InvalidPrivacyParameter or InvalidDomain as ``release_sum``.
    """
    stats, grid, rows, dlt = _prepare(values, lower, upper, max_rows, mechanism, delta)
    half = grid.half
    top = half * half
    noises = _MomentNoises(
        VARIANCE_SHARES,
        {"count": (COUNT_GRID, COUNT_UNITS), "sum": (grid.shift, grid.shift_units),
         "sum_of_squares": (grid.square, grid.square_units)},
        epsilon=epsilon,
        delta=dlt,
        mechanism=mechanism,
        rows=rows,
        random_state=random_state,
    )
    noisy_count = noises.noisy("count", stats.count * COUNT_UNITS)
    noisy_sum = noises.noisy("sum", stats.shifted)
    noisy_squares = noises.noisy("sum_of_squares", stats.squares)
    denominator = max(noisy_count, 1.0)
    mean = _clip(noisy_sum / denominator, -half, half)
    second = _clip(noisy_squares / denominator, 0.0, top)
    variance = on_grid(_clip(second - mean * mean, 0.0, top), grid.square, 0.0, top)

    worst_case = _finite_or(lambda: _variance_interval(
        noisy_count, noisy_sum, noisy_squares, noises, half, estimate=variance
    ), (0.0, top))
    calibrated = _finite_or(lambda: _plugin_variance_interval(
        noisy_count, noisy_sum, noisy_squares, noises, half, estimate=variance
    ), None)
    assert worst_case is not None  # its fallback is the bounds' whole range
    low, high = _outward(calibrated if calibrated is not None else worst_case,
                         grid.square, 0.0, top)
    companion = _outward(worst_case, grid.square, 0.0, top)

    # Delta-method standard error of S2/N - (S1/N)² (hypot: no overflow on wide bounds).
    std_error = _finite_cap(
        math.hypot(
            noises["sum_of_squares"].std,
            2.0 * mean * noises["sum"].std,
            (2.0 * mean * mean - second) * noises["count"].std,
        )
        / denominator,
        top,
    )
    if std:
        root = math.sqrt(variance)
        # d sqrt(V) = dV / (2 sqrt(V)); near V = 0 the bound half is the honest cap.
        spread = min(std_error / (2.0 * root), half) if root > 0 else half

        def rooted(interval: tuple[float, float]) -> tuple[float, float]:
            return _outward((math.sqrt(interval[0]), math.sqrt(interval[1])), grid.shift,
                            0.0, half)

        return Release(
            value=on_grid(root, grid.shift, 0.0, half),
            noise_scale=on_grid(spread, grid.shift, 0.0, half),
            ci95=rooted((low, high)),
            epsilon=noises.epsilon,
            delta=noises.delta,
            ci95_worst_case=rooted(companion),
            grid=grid.shift,
        )
    return Release(
        value=variance,
        noise_scale=on_grid(std_error, grid.square, 0.0, top),
        ci95=(low, high),
        epsilon=noises.epsilon,
        delta=noises.delta,
        ci95_worst_case=companion,
        grid=grid.square,
    )


# Of the 5% a variance interval may miss, this much goes to the nuisance mean's interval.
_VARIANCE_MEAN_ALPHA = 0.005
# The nuisance mean is searched over this many cells (times VARIANCE_CELLS cells of V).
_MEAN_CELLS = 16
_VARIANCE_CELLS = 64
# The plug-in interval is used while the count's noise std is at most this share of the noisy
# count; beyond it, ignoring the mean's uncertainty under-covers (93% at 11%, measured).
PLUGIN_MAX_COUNT_NOISE = 0.06


def _variance_interval(
    noisy_count: float,
    noisy_sum: float,
    noisy_squares: float,
    noises: _MomentNoises,
    half: float,
    *,
    estimate: float,
) -> tuple[float, float]:
    """95% confidence interval for the variance V of y = x - mid, by a profile pivot.

    With T1 = Σy + Z1, T2 = Σy² + Z2, N = n + Z_N and the true mean μ of y,
    A(μ) = T2 - 2μ·T1 + μ²·N satisfies A(μ) - V·N = Z2 - 2μ·Z1 + (μ² - V)·Z_N exactly
    (since Σ(y - μ)² = n·V). V is accepted when, for some μ in the 99.5% interval for μ,
    |A(μ) - V·N| is within the 95.5% quantile of that noise: coverage >= 95% (union bound).
    The count noise enters T2 and N alike, and this pivot lets those errors cancel. The search
    runs over (μ, V) cells, each using the largest noise coefficients on it.

    It is conservative when the mean is poorly known (small n or ε), because the union over
    the nuisance μ widens it; the coverage tests record the figures.
    """
    count, total, squares = noises["count"], noises["sum"], noises["sum_of_squares"]
    top = half * half
    mean_set = ratio_interval(
        noisy_sum,
        noisy_count,
        family=total.kind,
        total_scale=total.interval_scale,
        count_scale=count.interval_scale,
        c_lower=-half,
        c_upper=half,
        level=1.0 - _VARIANCE_MEAN_ALPHA,
    )
    if mean_set is None:
        return estimate, estimate
    mu_left, mu_right = cell_edges(*mean_set, cells=_MEAN_CELLS)
    mu_abs = np.maximum(np.abs(mu_left), np.abs(mu_right))
    mu_sq_low = np.where(
        (mu_left <= 0.0) & (mu_right >= 0.0), 0.0, np.minimum(mu_left**2, mu_right**2)
    )

    def profile(mu: FloatArray) -> FloatArray:
        result: FloatArray = noisy_squares - 2.0 * mu * noisy_sum + mu * mu * noisy_count
        return result

    # A(μ) is a quadratic: its range over a cell is reached at the ends or at the vertex.
    vertex = noisy_sum / noisy_count if noisy_count != 0.0 else float(mu_left[0])
    candidates = np.stack(
        (profile(mu_left), profile(mu_right), profile(np.clip(vertex, mu_left, mu_right)))
    )

    # Every (μ cell, V cell) pair, flattened with the μ cells varying slowest.
    v_left, v_right = cell_edges(0.0, top, cells=_VARIANCE_CELLS)
    per_mu = v_left.size

    def by_mu(values: FloatArray) -> FloatArray:
        return np.repeat(values, per_mu)

    v_low, v_high = np.tile(v_left, mu_left.size), np.tile(v_right, mu_left.size)
    count_coefficient = np.maximum(
        np.abs(by_mu(mu_abs**2) - v_low), np.abs(v_high - by_mu(mu_sq_low))
    )
    scales = np.column_stack(
        (
            np.full(v_low.size, squares.interval_scale),
            2.0 * by_mu(mu_abs) * total.interval_scale,
            count_coefficient * count.interval_scale,
        )
    )
    cells = PivotCells(
        left=v_low,
        # A variance on [lower, upper] is at most half² - μ² (Bhatia-Davis).
        right=np.minimum(v_high, top - by_mu(mu_sq_low)),
        observed_low=by_mu(candidates.min(axis=0)),
        observed_high=by_mu(candidates.max(axis=0)),
        noise_scales=scales,
    )
    level = 0.95 + _VARIANCE_MEAN_ALPHA
    return _hull_with(accepted_hull(cells, noisy_count, total.kind, level), estimate)


def _plugin_variance_interval(
    noisy_count: float,
    noisy_sum: float,
    noisy_squares: float,
    noises: _MomentNoises,
    half: float,
    *,
    estimate: float,
) -> tuple[float, float] | None:
    """Calibrated 95% interval for the variance V of y = x - mid, or None if the count is
    too noisy for it (noise std above PLUGIN_MAX_COUNT_NOISE of the noisy count).

    The profile pivot of ``_variance_interval`` at one mean, the estimate m = T1/N (clipped to
    the bounds) instead of a union over a 99.5% set: V is accepted when |A(m) - V·N| is within
    the 95% quantile of |Z2 - 2m·Z1 + (m² - V)·Z_N|. With the true mean μ in place of m this
    is exact; m differs from μ by (Z1 - μ·Z_N)/N, which moves A by N(m - μ)² and the noise
    coefficients by O(|m - μ|), both small beside the pivot's noise once the count is well
    known. Measured (10^5 draws per case, ε = 1, n = 100..1000, means anywhere in the bounds,
    variances from 0.01 to the maximum): 94.0-95.4% when the count's noise std is <= 6% of
    N; 93.3-96.2% at 11%; 92-97% at 17-19%. So: calibrated, not valid for every dataset.
    """
    count, total, squares = noises["count"], noises["sum"], noises["sum_of_squares"]
    if noisy_count <= 0.0 or count.std > PLUGIN_MAX_COUNT_NOISE * noisy_count:
        return None
    mu = _clip(noisy_sum / noisy_count, -half, half)
    observed = noisy_squares - 2.0 * mu * noisy_sum + mu * mu * noisy_count
    v_left, v_right = cell_edges(0.0, half * half, cells=_VARIANCE_CELLS)
    coefficient = np.maximum(np.abs(mu * mu - v_left), np.abs(mu * mu - v_right))
    scales = np.column_stack(
        (
            np.full(v_left.size, squares.interval_scale),
            np.full(v_left.size, 2.0 * abs(mu) * total.interval_scale),
            coefficient * count.interval_scale,
        )
    )
    cells = PivotCells(
        left=v_left,
        right=v_right,
        observed_low=np.full(v_left.size, observed),
        observed_high=np.full(v_left.size, observed),
        noise_scales=scales,
    )
    return _hull_with(accepted_hull(cells, noisy_count, total.kind, 0.95), estimate)


_Interval = tuple[float, float]


def _finite_or(compute: Callable[[], _Interval | None],
               fallback: _Interval | None) -> _Interval | None:
    """``compute()``, or ``fallback`` when it overflows (bounds near the float range's edge at
    a tiny ε): the fallback is the trivially valid interval (or none), never NaN or ±inf."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            interval = compute()
        except (OverflowError, ZeroDivisionError):
            return fallback
    if interval is None:
        return fallback if fallback is not None else None
    if not all(math.isfinite(end) for end in interval):
        return fallback
    return interval


def _finite_cap(value: float, cap: float) -> float:
    """min(value, cap), with a non-finite value (an overflow) taken as the cap."""
    return min(value, cap) if math.isfinite(value) else cap


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _hull_with(interval: tuple[float, float] | None, point: float) -> tuple[float, float]:
    """The interval widened to contain the released point, so the answer sits inside its CI."""
    if interval is None:
        return point, point
    return min(interval[0], point), max(interval[1], point)
