"""Quantiles by the exponential mechanism over the bounded public domain.

The domain [lower, upper] is cut into G equal public cells. Cell j = [e_j, e_j+1) holds the
order statistics of ranks r_j < k <= r_j+1, where r_j = #{x < e_j}; its utility is minus the
distance from the target rank q·n to [r_j, r_j+1]. The mechanism picks a cell with probability
proportional to exp(ε·utility / (2Δ)) and returns a uniform point in it. For empty cells this is
Smith's (2011) mechanism over the intervals between sorted values (as in OpenDP and
diffprivlib) at the grid's resolution; unlike it, a cell holding a tie of many equal values
scores 0, so data with repeated values (all at one value, say) still get an accurate answer.
Adding or removing one row moves every r_j by at most 1 and q·n by q, so the utility changes by
at most 1 per row: Δ = max_rows for a unit with at most max_rows rows, and the draw is ε-DP.
n is used only inside the mechanism, never released.

The 95% interval needs budget of its own: the released point alone says nothing about how
concentrated the data are. By default half of ε goes to the point, a quarter each to a lower
and an upper confidence bound, each picked by the exponential mechanism among the edges of
512 public cells (see ``_confidence_bound``). The bounds are valid for every dataset, which
makes them conservative on typical data: measured coverage is ~100%, not 95%.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .intervals import FloatArray
from .noise import Z95
from .randomness import RandomSource, Rng, resolve_rng, uniform
from .release import Release
from .validation import (
    Number,
    as_values,
    check_bounds,
    check_epsilon,
    check_max_rows,
    check_quantile_level,
)

POINT_SHARE = 0.5
"""Share of ε for the point estimate; the rest is split equally between the two CI bounds."""

POINT_CELLS = 2**12
"""Public cells for the point estimate: resolution (upper - lower) / 4096."""

CONFIDENCE_CELLS = 512
"""Public cells whose edges are the candidate confidence bounds (resolution (upper-lower)/512)."""

_ALPHA = 0.05
# Chance the always-valid anchor (lower or upper bound of the domain) is chosen when the data
# offer a cell of utility 0; it costs ln(1/η) of slack.
_ANCHOR_SHARE = 0.01

def release_quantile(
    values: ArrayLike,
    *,
    q: Number,
    lower: Number,
    upper: Number,
    epsilon: Number,
    max_rows: int = 1,
    interval: bool = True,
    random_state: RandomSource = None,
) -> Release:
    """Differentially private q-quantile of ``values`` clamped to [lower, upper].

    Guarantee: ε-DP (δ = 0) under add/remove of one unit with at most ``max_rows`` rows.
    ``value`` always lies in [lower, upper]. With ``interval=True`` (default) ε is split 1/2
    for the point and 1/4 for each confidence bound; ``ci95`` then covers the true quantile
    (any definition between the order statistics around rank q·(n-1)) with probability
    >= 95% for every dataset. With ``interval=False`` the point gets all of ε and ``ci95`` is
    the trivially valid [lower, upper]. ``noise_scale`` is the ci95 width / (2·1.96).

    Cost: one sort of the values (O(n log n)), then O(cells · log n).
    Raises InvalidPrivacyParameter (ε, max_rows) or InvalidDomain (q, bounds, NaN).
    """
    level = check_quantile_level(q)
    low, high = check_bounds(lower, upper)
    eps = check_epsilon(epsilon)
    rows = check_max_rows(max_rows)
    z = np.clip(as_values(values), low, high)  # a fresh array: safe to sort in place
    z.sort()
    rng = resolve_rng(random_state)

    point_eps = eps * POINT_SHARE if interval else eps
    value = _sample_quantile(z, low, high, level, point_eps, rows, rng)
    if interval:
        bound_eps = eps * (1.0 - POINT_SHARE) / 2.0
        ci_low = _confidence_bound(z, low, high, level, bound_eps, rows, "lower", rng)
        ci_high = _confidence_bound(z, low, high, level, bound_eps, rows, "upper", rng)
        ci = (min(ci_low, value), max(ci_high, value))
    else:
        ci = (low, high)
    return Release(
        value=value,
        noise_scale=(ci[1] - ci[0]) / (2.0 * Z95),
        ci95=ci,
        epsilon=eps,
        delta=0.0,
    )


def confidence_rank_slack(epsilon: float, max_rows: int) -> float:
    """Ranks by which a confidence bound aims beyond q·n, for bound budget ``epsilon``."""
    per_rank = epsilon / (2.0 * max_rows)
    return (math.log(2 * CONFIDENCE_CELLS / _ALPHA) + math.log(1 / _ANCHOR_SHARE)) / per_rank


def _sample_index(log_weights: FloatArray, rng: Rng) -> int:
    """Draw index i with probability proportional to exp(log_weights[i]) (inverse CDF)."""
    weights = np.exp(log_weights - np.max(log_weights))
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, uniform(rng) * cumulative[-1], side="right"))
    # u·total can round up to total; fall back to the last index that has weight.
    return min(index, int(np.flatnonzero(weights)[-1]))


def _cell_ranks(z: FloatArray, edges: FloatArray, side: Literal["left", "right"]) -> FloatArray:
    """#{x < e} (side "left") or #{x <= e} (side "right") for every edge e of sorted ``z``."""
    ranks: FloatArray = np.searchsorted(z, edges, side=side).astype(np.float64)
    return ranks


def _distance(target: float, low: FloatArray, high: FloatArray) -> FloatArray:
    """Distance from ``target`` to each rank range [low, high]."""
    result: FloatArray = np.maximum(0.0, np.maximum(low - target, target - high))
    return result


def _sample_quantile(
    z: FloatArray,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    rng: Rng,
) -> float:
    per_rank = epsilon / (2.0 * max_rows)
    edges = np.linspace(low, high, POINT_CELLS + 1)
    ranks = _cell_ranks(z, edges, "left")
    ranks[-1] = z.size  # the last cell is closed: it holds the values equal to ``upper``
    utility = -_distance(q * z.size, ranks[:-1], ranks[1:])
    cell = _sample_index(per_rank * utility, rng)
    left, right = edges[cell], edges[cell + 1]
    return float(min(max(left + uniform(rng) * (right - left), low), high))


def _confidence_bound(
    z: FloatArray,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
    rng: Rng,
) -> float:
    """An ε-DP lower (or upper) confidence bound for the q-quantile, failing w.p. <= 2.5%.

    Candidates are the edges e_0 < ... < e_G of G public cells. For the lower bound, cell j has
    rank range [r_j, r_{j+1}] with r_j = #{x < e_j} (r_G = n); utility is minus the distance of
    the target rank t = q·n - 1 - s to that range, except the anchor e_0 = lower, which is
    always valid and scores at least -s0. If e_j exceeds the true quantile, then
    r_j >= floor(q(n-1)) + 1 > q·n - 1, so its utility is below -s; since the anchor scores
    >= -s0, P(bad) <= G·exp(-ε(s - s0)/(2Δ)) = 2.5% with s - s0 = (2Δ/ε)·ln(2G/0.05).
    The upper bound mirrors this with #{x <= e_j} and t = q·n + 1 + s. Utilities change by at
    most 1 per row added or removed (ranks and t move by <= 1), so the draw is ε-DP.
    """
    n = z.size
    per_rank = epsilon / (2.0 * max_rows)
    slack = confidence_rank_slack(epsilon, max_rows)
    edges = np.linspace(low, high, CONFIDENCE_CELLS + 1)
    if side == "lower":
        ranks = _cell_ranks(z, edges, "left")
        ranks[-1] = n
        candidates, anchor, target = edges[:-1], 0, q * n - 1.0 - slack
    else:
        ranks = _cell_ranks(z, edges, "right")
        ranks[0] = 0.0
        candidates, anchor, target = edges[1:], CONFIDENCE_CELLS - 1, q * n + 1.0 + slack
    utility = -_distance(target, ranks[:-1], ranks[1:])
    utility[anchor] = max(utility[anchor], -math.log(1 / _ANCHOR_SHARE) / per_rank)
    return float(candidates[_sample_index(per_rank * utility, rng)])
