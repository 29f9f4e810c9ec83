"""Confidence intervals for ratios of noisy releases (means, variances), by test inversion.

A mean is released as a noisy total T = c·n + Z_T over a noisy count N = n + Z_N, where c is the
true per-row average, known to lie in a public range [c_lo, c_hi]. For any candidate c,

    T - c·N = Z_T - c·Z_N

involves only the noises, whose laws are public, so the candidates c for which |T - c·N| is
within the ``level`` quantile of |Z_T - c·Z_N| form an exact ``level`` confidence set (Fieller's
method). It uses only released values, so it costs no budget, and it holds for every n >= 1.
Variances use the same idea with a three-noise pivot (see ``moments._variance_interval``).

The set is searched over a grid of cells: inside a cell the pivot's quantile is replaced by its
largest value on the cell, which can only enlarge the set (the quantile grows with every noise
coefficient, the noises being symmetric and unimodal). We report the set's hull.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import NDArray

Family = Literal["laplace", "gaussian"]
FloatArray = NDArray[np.float64]

RATIO_CELLS = 256
"""Cells for a ratio's confidence set: coarser grids over-cover by a few tenths of a point."""

# Laplace scales are rounded up onto a geometric grid of this ratio: larger scales give a wider,
# still valid, quantile, and distinct grid points keep the partial fractions well conditioned.
_GRID_STEP = math.log1p(1e-3)
# Newton converges quadratically from a start within a factor ~3 of the root.
_NEWTON_STEPS = 12


def abs_sum_quantiles(family: Family, scales: FloatArray, level: float) -> FloatArray:
    """Row-wise w with P(|Σ_i s_i X_i| <= w) >= ``level``, X_i iid standard Laplace or normal.

    ``scales`` has one row per case and one column per noise term (>= 0). Exact for the
    Gaussian; for the Laplace exact up to rounding the scales up by < 0.1%.

    Laplace: with distinct scales the characteristic function Π 1/(1 + s_i² t²) splits into
    partial fractions, so |W| has tail P(|W| > w) = Σ c_i exp(-w/s_i) with
    c_i = Π_{j≠i} s_i² / (s_i² - s_j²); we solve tail = 1 - level by Newton's method.
    """
    scales = np.asarray(scales, dtype=np.float64)
    if family == "gaussian":
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        result: FloatArray = z * np.sqrt(np.sum(scales * scales, axis=1))
        return result
    quantiles = np.zeros(scales.shape[0])
    rows = np.any(scales > 0.0, axis=1)  # rows without noise have quantile 0
    if np.any(rows):
        quantiles[rows] = _laplace_sum_quantiles(scales[rows], level)
    return quantiles


def _laplace_sum_quantiles(scales: FloatArray, level: float) -> FloatArray:
    """``abs_sum_quantiles`` for Laplace terms; every row has a positive scale."""
    k = scales.shape[1]
    top = np.max(scales, axis=1, keepdims=True)
    live = scales > 0.0
    with np.errstate(divide="ignore"):  # log(0) for absent terms, masked just below
        steps = np.ceil(np.log(scales / top) / _GRID_STEP - 1e-9)
    steps = np.where(live, np.minimum(steps, 0.0), -np.inf)
    # Keep grid points distinct: a tie moves above every earlier column (a larger scale).
    for column in range(1, k):
        earlier = steps[:, :column]
        tie = live[:, column] & np.any(earlier == steps[:, column : column + 1], axis=1)
        steps[:, column] = np.where(tie, np.max(earlier, axis=1) + 1.0, steps[:, column])
    grid = np.where(live, top * np.exp(np.where(live, steps, 0.0) * _GRID_STEP), 0.0)

    squares = grid * grid
    # Absent terms (scale 0) contribute a factor s_i² / s_i² = 1 and weight 0.
    differences = squares[:, :, None] - squares[:, None, :]  # s_i² - s_j²
    mask = ~np.eye(k, dtype=bool)[None, :, :] & live[:, None, :] & live[:, :, None]
    factors = np.where(mask, squares[:, :, None] / np.where(mask, differences, 1.0), 1.0)
    weights = np.where(live, np.prod(factors, axis=2), 0.0)
    inverse = np.where(live, 1.0 / np.where(live, grid, 1.0), 0.0)

    # |Σ| > w needs some |s_i X_i| > w·s_i/Σs: a tail of at most k·exp(-w/Σs), so the
    # quantile lies below this start. log P(|W| > w) is concave in w (sums of Laplace
    # variables are log-concave), so Newton's method from above decreases monotonically to
    # the root and every iterate is itself a valid (>=) quantile.
    log_alpha = math.log(1.0 - level)
    w = grid.sum(axis=1) * (math.log(k) - log_alpha)
    for _ in range(_NEWTON_STEPS):
        terms = weights * np.exp(-w[:, None] * inverse)
        tail = terms.sum(axis=1)
        slope = (terms * inverse).sum(axis=1)  # -d tail / dw
        with np.errstate(divide="ignore", invalid="ignore"):
            step = (np.log(tail) - log_alpha) * tail / slope
        # Never step up, and stop a row whose tail rounded to nothing: stay on the valid side.
        step = np.where(np.isfinite(step), np.minimum(step, 0.0), 0.0)
        w = w + step
        # Every iterate is a valid quantile, so stopping once the steps are below rounding
        # noise changes nothing but the time (typically 5 steps instead of 12).
        if np.all(-step <= 1e-12 * w):
            break
    quantiles: FloatArray = w
    return quantiles


@dataclass(frozen=True, slots=True)
class PivotCells:
    """Cells over the parameter c, each with what the pivot test needs on it.

    For every c in cell i the pivot is (observed part) - c·count, where the observed part lies in
    [observed_low[i], observed_high[i]], and its noise is Σ_j noise_scales[i, j]·X_j with the
    coefficients already maximised over the cell.
    """

    left: FloatArray
    right: FloatArray
    observed_low: FloatArray
    observed_high: FloatArray
    noise_scales: FloatArray


def _accepted(
    cells: PivotCells, count: float, halfwidth: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Per cell, the accepted sub-interval [low, high] (empty when low > high)."""
    floor = cells.observed_low - halfwidth
    ceiling = cells.observed_high + halfwidth
    if count > 0:
        low, high = floor / count, ceiling / count
    elif count < 0:
        low, high = ceiling / count, floor / count
    else:
        inside = (floor <= 0.0) & (ceiling >= 0.0)
        low = np.where(inside, -np.inf, np.inf)
        high = np.where(inside, np.inf, -np.inf)
    return np.maximum(low, cells.left), np.minimum(high, cells.right)


def accepted_hull(
    cells: PivotCells, count: float, family: Family, level: float
) -> tuple[float, float] | None:
    """Hull of the candidates c accepted at ``level``; None if none is (probability at most
    1 - level): c is accepted when c·count is within the pivot noise's ``level`` quantile of
    the observed part."""
    # Cheap first pass: a |Σ| above Σ s_j·ln(k/α) has probability <= α (union bound), so
    # cells rejected with that halfwidth are rejected; only the rest need the exact quantile.
    k = cells.noise_scales.shape[1]
    loose = np.sum(cells.noise_scales, axis=1) * math.log(k / (1.0 - level))
    low, high = _accepted(cells, count, loose)
    keep = low <= high
    if not np.any(keep):
        return None
    kept = PivotCells(
        cells.left[keep],
        cells.right[keep],
        cells.observed_low[keep],
        cells.observed_high[keep],
        cells.noise_scales[keep],
    )
    low, high = _accepted(kept, count, abs_sum_quantiles(family, kept.noise_scales, level))
    accepted = low <= high
    if not np.any(accepted):
        return None
    return float(np.min(low[accepted])), float(np.max(high[accepted]))


def cell_edges(lower: float, upper: float, cells: int) -> tuple[FloatArray, FloatArray]:
    """Left and right ends of ``cells`` equal cells over [lower, upper], split at 0 if inside."""
    edges = np.linspace(lower, upper, cells + 1)
    if lower < 0.0 < upper:
        edges = np.union1d(edges, [0.0])
    return edges[:-1], edges[1:]


def ratio_interval(
    noisy_total: float,
    noisy_count: float,
    *,
    family: Family,
    total_scale: float,
    count_scale: float,
    c_lower: float,
    c_upper: float,
    level: float,
) -> tuple[float, float] | None:
    """Hull of the ``level`` confidence set for c = total / count within [c_lower, c_upper].

    ``total_scale``/``count_scale`` are the Laplace scales b (or Gaussian σ) of Z_T and Z_N.
    """
    left, right = cell_edges(c_lower, c_upper, cells=RATIO_CELLS)
    largest_c = np.maximum(np.abs(left), np.abs(right))
    scales = np.column_stack((np.full(left.size, total_scale), largest_c * count_scale))
    observed = np.full(left.size, noisy_total)
    return accepted_hull(PivotCells(left, right, observed, observed, scales), noisy_count,
                         family, level)
