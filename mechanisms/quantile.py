"""Quantiles by the exponential mechanism over the bounded public domain.

Point estimate. The domain [lower, upper] is cut into G = 4096 equal public cells. Cell
j = [e_j, e_j+1) holds the order statistics of ranks r_j < k <= r_j+1, where r_j = #{x < e_j};
its utility is minus the distance from the target rank q·n to [r_j, r_j+1]. The mechanism picks
a cell with probability proportional to exp(ε·utility / (2Δ)) and returns a uniform point in
it. For empty cells this is Smith's (2011) mechanism over the intervals between sorted values
(as in OpenDP and diffprivlib) at the grid's resolution; unlike it, a cell holding a tie of many
equal values scores 0, so data with repeated values (all at one value, say) still get an
accurate answer. Adding or removing one row moves every r_j by at most 1 and q·n by q, so the
utility changes by at most 1 per row: Δ = max_rows for a unit with at most max_rows rows, and
the draw is ε-DP. n is used only inside the mechanisms, never released.

The 95% interval needs budget of its own: the released point alone says nothing about how
concentrated the data are. ε is split 1/2 for the point and 1/4 for each of a lower and an upper
bound, two more exponential-mechanism draws; the interval is the hull of the two bounds and the
point. Since the three draws are independent and the hull fails only if a bound and the point
are both on the wrong side of the truth x*,

    P(miss) = P(L > x*)·P(V > x*) + P(U < x*)·P(V < x*) <= max(P(L > x*), P(U < x*)),

with equality when the two bounds fail equally often (P(V = x*) = 0): each bound may fail with
probability 5%, not 2.5%, which narrows the interval by about a quarter. Two kinds of bounds:

"calibrated" (default): ~95% coverage on data whose density is smooth near the quantile.
    Each bound is the exponential mechanism over a fine grid of 2^32 cells (sampled in O(n) by
    grouping cells of equal utility into pieces; see ``QuantileIndex``), aimed K ranks
    below / above the truth.
    The truth np.quantile(x, q) sits at continuous rank q(n-1) + 1 (rank k + θ meaning
    θ of the way from x_(k) to x_(k+1)). When the gaps between order statistics are locally
    even, the drawn rank R has P(R = k) ∝ exp(-ε'|k - t|) (ε' = ε_bound/(2Δ)) and the bound
    lies uniformly inside gap R, so its continuous rank is t + 1/2 + (a symmetric, almost
    exactly Lap(1/ε') error). Targets t = q(n-1) + 1/2 ∓ K therefore fail with
    probability exp(-ε'K)/2 each, = 5% for K = ln(10)/ε'. Real data have random (locally
    exponential) gaps; the mechanism favours the larger ones, which raises the mean failure
    rate by a factor that we computed exactly under that model (Poisson spacings, 1,500
    datasets per ε, ε = 0.1..8): it amounts to a shift of 0.62/(1 + 0.8ε') ranks, added to K
    (see ``calibrated_rank_offset``). Near rank 0 (or n) the noise would push the draw below
    the data, where there are no ranks; an "anchor" candidate (the bound ``lower``, or
    ``upper``) stands for those virtual ranks, spaced as n rows spread evenly over the bounds.
    Guarantee: none for every dataset. Coverage is ~95% when the density is roughly constant
    across the interval and the data have no ties near the quantile; measured figures and the
    cases where it fails (ties, integer-valued data, steep density changes) are in the module
    tests and in ``release_quantile``'s docstring.

"worst_case": >= 95% coverage for every dataset (ties included). Each bound is picked among the
    edges of 512 public cells, aimed at rank q·n ∓ (1 + s) with a union-bound slack
    s = (2Δ/ε_bound)·(ln(G/0.05) + ln 100) (see ``_confidence_bound``); on typical data it is
    several times wider than the calibrated interval and covers ~100%.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import discrete
from .errors import InvalidDomain
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

IntervalKind: TypeAlias = Literal["calibrated", "worst_case", "none"]
INTERVAL_KINDS: tuple[IntervalKind, ...] = ("calibrated", "worst_case", "none")

IntArray = NDArray[np.int64]

POINT_SHARE = 0.5
"""Share of ε for the point estimate; the rest is split equally between the two CI bounds."""

POINT_CELLS = 2**12
"""Public cells for the point estimate: resolution (upper - lower) / 4096."""

BOUND_CELLS = 2**32
"""Public cells for a calibrated bound: fine enough that a cell holds well under one row of
typical data even for n = 10^6 concentrated on 1% of loose bounds."""

CONFIDENCE_CELLS = 512
"""Public cells whose edges are the candidate worst-case bounds ((upper-lower)/512 apart)."""

SIDE_ALPHA = 0.05
"""Failure probability of each bound; the hull with the point makes the interval's 5%."""

# Mean extra failure of a calibrated bound on data with random (Poisson) spacings, as a shift
# of the target in ranks: SPACING_SHIFT / (1 + SPACING_DECAY·ε'). Computed exactly (no Monte
# Carlo noise on the mechanism) over 1,500 uniform datasets per ε' in 0.0125..1; the fit is
# within ±0.05 rank of every point.
SPACING_SHIFT = 0.62
SPACING_DECAY = 0.8

_EXP_FLOOR = -700.0  # see _sample_index

# Every exponential-mechanism draw here is, with public probability UNIFORM_SHARE, replaced by
# an exactly uniform candidate (see _sample_index). 2^-30 (~9e-10) changes no accuracy figure
# (a bound's 5% failure rate moves by < 1e-9) yet gives each of K candidates a probability
# >= 2^-30/K under every dataset, so no output is possible under one dataset and not another.
UNIFORM_SHARE_DENOMINATOR = 2**30

# Worst case: chance the always-valid anchor (lower or upper bound of the domain) is chosen when
# the data offer a cell of utility 0; it costs ln(1/η) of slack.
_ANCHOR_SHARE = 0.01


def release_quantile(
    values: ArrayLike,
    *,
    q: Number,
    lower: Number,
    upper: Number,
    epsilon: Number,
    max_rows: int = 1,
    interval: IntervalKind = "calibrated",
    random_state: RandomSource = None,
) -> Release:
    """Differentially private q-quantile of ``values`` clamped to [lower, upper].

    Guarantee: ε-DP (δ = 0) under add/remove of one unit with at most ``max_rows`` rows,
    whatever ``interval`` is. ``value`` always lies in [lower, upper], and inside ``ci95``.

    ``interval`` (ε split 1/2 point, 1/4 each bound unless "none"):
        "calibrated": ``ci95`` covers np.quantile(clamped values, q) in ~95% of releases when
            the data's density is smooth and roughly constant across the interval (about
            K = 18.4·max_rows/ε ranks each side of q·n). Measured mean coverage over datasets
            (exact probabilities, 20-40 datasets per case; Monte Carlo agrees): 94.3-96.0% for
            beta, normal, uniform, exponential and lognormal data with n = 1,000..10^6,
            q = 0.1/0.5/0.9, ε = 1 and 4, and with n = 10^4..10^5 at ε = 0.25; 94.8-95.1% at
            n = 300, q = 0.5, ε = 1. On one fixed dataset coverage varies around that mean
            with the random gaps near the quantile (SD ~0.4% at ε = 0.25, ~1% at ε = 1, ~2%
            at ε = 4). NOT valid for every dataset. It under-covers when many rows share the
            quantile's value (integer-valued columns: 44-96% for ages, 2-96% for small counts,
            depending on n, q, ε; a 5% tie at the median, n = 1,000, ε = 1: ~80%), and when
            the density changes several-fold across the interval: a tail quantile with
            (1-q)·n·ε or q·n·ε below ~50 (n = 300, q = 0.9, ε = 0.25: 80-94%; n = 300,
            q = 0.1/0.9, ε = 1: 92-96%), a quantile in a near-empty trough between two modes
            (n <= 1,000: 83-93%). Rows clamped to a bound (ties at ``lower``/``upper``) are
            handled (95-100%). Use "worst_case" for integer-valued or heavily tied columns.
        "worst_case": ``ci95`` covers the true quantile (any definition between the order
            statistics around rank q·(n-1)) with probability >= 95% for every dataset,
            ties included; ~100% on typical data, and several times wider.
        "none": the point gets all of ε; ``ci95`` is the trivially valid [lower, upper].
    ``noise_scale`` is the ci95 width / (2·1.96).

    Cost: one sort of the values (O(n log n)), then O(n + cells · log n); the same as
    ``release_quantile_indexed(quantile_index(values, ...), None, ...)``.
    Raises InvalidPrivacyParameter (ε, max_rows) or InvalidDomain (q, bounds, NaN, interval).
    """

    low, high = check_bounds(lower, upper)
    return release_quantile_indexed(
        quantile_index(values, lower=low, upper=high), None, q=q, lower=low, upper=high,
        epsilon=epsilon, max_rows=max_rows, interval=interval, random_state=random_state)


class QuantileIndex(NamedTuple):
    """Everything the quantile's three draws read of one column, built from ALL its n rows.

    A filtered quantile then costs the same work whatever the filter matches: the filter
    enters only as a 0/1 weight per row, through the cumulative matched count ``cum`` over
    the sorted rows (cum[k] = matched rows among the k smallest), and every rank the
    mechanisms need is cum at a position fixed here: #{matched x < e} = cum[#{all x < e}].
    Built once per dataset version (``quantile_index``), O(n log n); each release is then
    O(n) with array sizes fixed by n and the public parameters only.

    The BOUND_CELLS cells of a calibrated bound are cut into 2n + 1 pieces of equal rank range
    under any filter: for each sorted row, the empty cells between the previous row's cell and
    its own (a gap), and its own cell if it is the first row there (else an empty piece); then
    the cells after the last row. A piece with no cells has log count -inf (never drawn). The
    exponential mechanism picks a piece with weight (cells in it)·exp(utility) and a uniform
    cell inside: the same distribution over cells as grouping the matches' own runs.
    """

    domain: FloatArray  # [lower, upper] the index was built for
    values: FloatArray  # clip(x, lower, upper), sorted (n)
    order: IntArray  # values = clip(x)[order]
    point_left: IntArray  # #{x < e} for the POINT_CELLS + 1 point edges
    confidence_left: IntArray  # #{x < e} for the CONFIDENCE_CELLS + 1 edges
    confidence_right: IntArray  # #{x <= e} for the same edges
    at_bounds: IntArray  # [#{x <= lower}, #{x < upper}]
    piece_first: IntArray  # first cell of each of the 2n + 1 pieces
    piece_count: IntArray  # its number of cells (0 for an empty piece)
    piece_log_count: FloatArray  # log of that, -inf for 0
    piece_low: IntArray  # rank range [cum[piece_low], cum[piece_high]]
    piece_high: IntArray


def quantile_index(values: ArrayLike, *, lower: Number, upper: Number) -> QuantileIndex:
    """The ``QuantileIndex`` of ``values`` (all rows of a column) for public bounds [lower, upper].

    Raises InvalidDomain for bad bounds or NaN values.
    """
    low, high = check_bounds(lower, upper)
    clamped = np.clip(as_values(values), low, high)
    order = np.argsort(clamped, kind="stable").astype(np.int64)
    z = clamped[order]
    n = z.size
    cells = BOUND_CELLS
    pieces = 2 * n + 1
    first = np.empty(pieces, dtype=np.int64)
    count = np.empty(pieces, dtype=np.int64)
    rank_low = np.empty(pieces, dtype=np.int64)
    rank_high = np.empty(pieces, dtype=np.int64)
    positions = np.arange(n, dtype=np.int64)
    if n:
        index = _cell_index(z, low, high)
        previous = np.concatenate(([-1], index[:-1]))
        starts_cell = index != previous
        # end of each row's cell: the start of the next occupied cell (or n)
        change = np.flatnonzero(starts_cell)
        cell_end = np.append(change[1:], n)[np.cumsum(starts_cell) - 1]
        first[0:-1:2], count[0:-1:2] = previous + 1, np.maximum(index - previous - 1, 0)
        rank_low[0:-1:2] = rank_high[0:-1:2] = positions  # a gap: rows before it are below
        first[1::2], count[1::2] = index, starts_cell.astype(np.int64)
        rank_low[1::2], rank_high[1::2] = positions, cell_end
        last = int(index[-1])
    else:
        last = -1
    first[-1], count[-1] = last + 1, cells - 1 - last
    rank_low[-1] = rank_high[-1] = n
    log_count = np.full(pieces, -math.inf)
    np.log(count.astype(np.float64), out=log_count, where=count > 0)
    point_edges = np.linspace(low, high, POINT_CELLS + 1)
    confidence_edges = np.linspace(low, high, CONFIDENCE_CELLS + 1)
    return QuantileIndex(
        domain=np.array([low, high]),
        values=z,
        order=order,
        point_left=np.searchsorted(z, point_edges, side="left").astype(np.int64),
        confidence_left=np.searchsorted(z, confidence_edges, side="left").astype(np.int64),
        confidence_right=np.searchsorted(z, confidence_edges, side="right").astype(np.int64),
        at_bounds=np.array([np.searchsorted(z, low, side="right"),
                            np.searchsorted(z, high, side="left")], dtype=np.int64),
        piece_first=first,
        piece_count=count,
        piece_log_count=log_count,
        piece_low=rank_low,
        piece_high=rank_high,
    )


def _cell_index(z: FloatArray, low: float, high: float) -> IntArray:
    """The calibrated bound's cell of each (clamped) value."""
    cells = BOUND_CELLS
    width = (high - low) / cells
    index = np.clip(np.floor((z - low) / width), 0, cells - 1).astype(np.int64)
    # Round-off: make low + index·width <= z < low + (index + 1)·width, as the outputs are.
    index -= (low + index * width > z) & (index > 0)
    index += (low + (index + 1) * width <= z) & (index < cells - 1)
    return index


class _Ranks(NamedTuple):
    """An index under one filter: the matched count and cumulative matched counts."""

    n: int
    cum: IntArray  # n_all + 1 entries


def _ranks(index: QuantileIndex, weights: ArrayLike | None) -> _Ranks:
    size = index.values.size
    if weights is None:
        return _Ranks(size, np.arange(size + 1, dtype=np.int64))
    w = np.asarray(weights)
    if w.shape != (size,) or not (w.dtype == np.bool_ or np.issubdtype(w.dtype, np.integer)):
        raise InvalidDomain(f"weights must be a 0/1 mask of the index's {size} rows")
    cum = np.zeros(size + 1, dtype=np.int64)
    # a gather and a prefix sum over all rows: the same work for any mask
    np.cumsum(w[index.order], dtype=np.int64, out=cum[1:])
    return _Ranks(int(cum[-1]), cum)


def release_quantile_indexed(
    index: QuantileIndex,
    weights: ArrayLike | None,
    *,
    q: Number,
    lower: Number,
    upper: Number,
    epsilon: Number,
    max_rows: int = 1,
    interval: IntervalKind = "calibrated",
    random_state: RandomSource = None,
) -> Release:
    """``release_quantile`` of the rows of ``index`` whose weight is 1 (all rows if None).

    ``weights`` is a 0/1 (or bool) mask over the rows in their original order. The result has
    exactly the distribution of ``release_quantile(values[weights], ...)``; the work depends only
    on the index's row count and the public parameters (see ``QuantileIndex``). ``lower`` and
    ``upper`` must be the bounds the index was built with.
    Raises InvalidPrivacyParameter (ε, max_rows) or InvalidDomain (q, bounds, weights, interval).
    """
    level = check_quantile_level(q)
    low, high = check_bounds(lower, upper)
    eps = check_epsilon(epsilon)
    rows = check_max_rows(max_rows)
    if interval not in INTERVAL_KINDS:
        raise InvalidDomain(f"interval must be one of {INTERVAL_KINDS}, got {interval!r}")
    if (low, high) != (float(index.domain[0]), float(index.domain[1])):
        raise InvalidDomain("the index was built for other bounds")
    ranks = _ranks(index, weights)
    rng = resolve_rng(random_state)

    point_eps = eps if interval == "none" else eps * POINT_SHARE
    value = _sample_quantile(index, ranks, low, high, level, point_eps, rows, rng)
    if interval == "none":
        ci = (low, high)
    else:
        bound_eps = eps * (1.0 - POINT_SHARE) / 2.0
        if interval == "calibrated":
            pieces = _piece_ranks(index, ranks)  # the same for both bounds: built once
            ci_low = _calibrated_bound(index, ranks, low, high, level, bound_eps, rows, "lower",
                                       rng, pieces)
            ci_high = _calibrated_bound(index, ranks, low, high, level, bound_eps, rows, "upper",
                                        rng, pieces)
        else:
            ci_low = _confidence_bound(index, ranks, low, high, level, bound_eps, rows, "lower",
                                       rng)
            ci_high = _confidence_bound(index, ranks, low, high, level, bound_eps, rows, "upper",
                                        rng)
        ci = (min(ci_low, value), max(ci_high, value))
    return Release(
        value=value,
        noise_scale=(ci[1] - ci[0]) / (2.0 * Z95),
        ci95=ci,
        epsilon=eps,
        delta=0.0,
        # A calibrated interval is not valid for every dataset; the public bounds are.
        ci95_worst_case=(low, high) if interval == "calibrated" else None,
    )


def calibrated_rank_offset(epsilon: float, max_rows: int) -> float:
    """K: ranks between a calibrated bound's target and the truth's centre, for bound budget ε.

    K = ln(1/(2·SIDE_ALPHA))/ε' + SPACING_SHIFT/(1 + SPACING_DECAY·ε'), ε' = ε/(2·max_rows):
    ln(10)/ε' makes a Lap(1/ε') rank error exceed K with probability 5%; the second term
    (~0.6 rank) corrects for random gaps (see the module docstring).
    """
    per_rank = epsilon / (2.0 * max_rows)
    return (
        math.log(1.0 / (2.0 * SIDE_ALPHA)) / per_rank
        + SPACING_SHIFT / (1.0 + SPACING_DECAY * per_rank)
    )


def confidence_rank_slack(epsilon: float, max_rows: int) -> float:
    """Ranks by which a worst-case bound aims beyond q·n, for bound budget ``epsilon``."""
    per_rank = epsilon / (2.0 * max_rows)
    return (math.log(CONFIDENCE_CELLS / SIDE_ALPHA) + math.log(1 / _ANCHOR_SHARE)) / per_rank


def _uniform_branch(rng: Rng) -> bool:
    """The mixture's coin: True (draw a uniform candidate) w.p. exactly 1/2^30, from exact bits."""
    return discrete.bernoulli(rng, 1, UNIFORM_SHARE_DENOMINATOR)


def _sample_index(log_weights: FloatArray, rng: Rng) -> int:
    """Draw index i among K = len(log_weights) candidates: with probability p = 2^-30 uniformly
    (exact integers), otherwise w.p. proportional to exp(log_weights[i]) (float inverse CDF).

    The float part alone cannot draw a candidate whose weight is below half an ulp of the
    running sum or below the e^-700 floor, and which candidates those are depends on the data:
    its support would depend on the data (not ε-DP for any ε). The mixture, with weights fixed
    and public, of the ε-DP exponential mechanism and a 0-DP uniform draw is ε-DP, and every
    candidate has probability >= p/K under every dataset. What remains is float error in the
    exponential part: np.exp and the sum are relatively exact to ~1e-15 for candidates of
    non-negligible probability; a candidate's probability can be off by up to ~K·2^-53 in
    absolute terms (rounding of the cumulative sum and of u·total), which the floor p/K turns
    into a bounded, not a vanishing, factor for the least likely candidates. An exact sampler
    (e.g. Ilvento 2020's base-2 exponential mechanism) would remove it; this one is a mixture.
    K must not depend on the data (callers pass a fixed number of candidates). The exponential
    draw is made whichever branch the coin takes, so the work does not reveal the coin either.
    """
    index = _exponential_index(log_weights, rng)
    if _uniform_branch(rng):
        return discrete.uniform_below(rng, len(log_weights))
    return index


def _exponential_index(log_weights: FloatArray, rng: Rng) -> int:
    """Draw index i with probability proportional to exp(log_weights[i]) (float inverse CDF)."""
    shifted = log_weights - np.max(log_weights)
    # np.exp (and any sum over its results) is ~2x slower for arguments whose result underflows
    # (below about -708): time would then depend on how many candidates the data make
    # improbable. The argument is clamped into the fast range and what the clamp raised is
    # zeroed: a weight below e^-700 of the largest counts as 0, as float underflow already
    # makes it a little further down (a probability below 1e-304 per candidate); the uniform
    # share of _sample_index keeps every candidate reachable.
    weights = np.exp(np.maximum(shifted, _EXP_FLOOR)) * (shifted > _EXP_FLOOR)
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, uniform(rng) * cumulative[-1], side="right"))
    # u·total can round up to total; fall back to the last index that has weight.
    return min(index, int(np.flatnonzero(weights)[-1]))


def _distance(target: float, low: FloatArray, high: FloatArray) -> FloatArray:
    """Distance from ``target`` to each rank range [low, high]."""
    result: FloatArray = np.maximum(0.0, np.maximum(low - target, target - high))
    return result


def _sample_quantile(
    index: QuantileIndex,
    ranks: _Ranks,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    rng: Rng,
) -> float:
    per_rank = epsilon / (2.0 * max_rows)
    edges = np.linspace(low, high, POINT_CELLS + 1)
    cell_ranks = ranks.cum[index.point_left].astype(np.float64)  # #{matched x < e}
    cell_ranks[-1] = ranks.n  # the last cell is closed: it holds the values equal to ``upper``
    utility = -_distance(q * ranks.n, cell_ranks[:-1], cell_ranks[1:])
    cell = _sample_index(per_rank * utility, rng)
    left, right = edges[cell], edges[cell + 1]
    return float(min(max(left + uniform(rng) * (right - left), low), high))


def _confidence_bound(
    index: QuantileIndex,
    ranks: _Ranks,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
    rng: Rng,
) -> float:
    """An ε-DP lower (or upper) confidence bound for the q-quantile, failing w.p. <= 5%.

    Candidates are the edges e_0 < ... < e_G of G public cells. For the lower bound, cell j has
    rank range [r_j, r_{j+1}] with r_j = #{x < e_j} (r_G = n); utility is minus the distance of
    the target rank t = q·n - 1 - s to that range, except the anchor e_0 = lower, which is
    always valid and scores at least -s0. If e_j exceeds the true quantile, then
    r_j >= floor(q(n-1)) + 1 > q·n - 1, so its utility is below -s; since the anchor scores
    >= -s0, P(bad) <= G·exp(-ε(s - s0)/(2Δ)) = 5% with s - s0 = (2Δ/ε)·ln(G/0.05).
    The upper bound mirrors this with #{x <= e_j} and t = q·n + 1 + s. Utilities change by at
    most 1 per row added or removed (ranks and t move by <= 1), so the draw is ε-DP.
    """
    n = ranks.n
    per_rank = epsilon / (2.0 * max_rows)
    slack = confidence_rank_slack(epsilon, max_rows)
    edges = np.linspace(low, high, CONFIDENCE_CELLS + 1)
    if side == "lower":
        cell_ranks = ranks.cum[index.confidence_left].astype(np.float64)
        cell_ranks[-1] = n
        candidates, anchor, target = edges[:-1], 0, q * n - 1.0 - slack
    else:
        cell_ranks = ranks.cum[index.confidence_right].astype(np.float64)
        cell_ranks[0] = 0.0
        candidates, anchor, target = edges[1:], CONFIDENCE_CELLS - 1, q * n + 1.0 + slack
    utility = -_distance(target, cell_ranks[:-1], cell_ranks[1:])
    utility[anchor] = max(utility[anchor], -math.log(1 / _ANCHOR_SHARE) / per_rank)
    return float(candidates[_sample_index(per_rank * utility, rng)])


class PieceRanks(NamedTuple):
    """The rank range [rank_low, rank_high] of each piece of ``QuantileIndex`` under a filter."""

    rank_low: FloatArray
    rank_high: FloatArray


def _piece_ranks(index: QuantileIndex, ranks: _Ranks) -> PieceRanks:
    """O(n), independent of ε, q, the side of the bound and of what the filter matches."""
    return PieceRanks(ranks.cum[index.piece_low].astype(np.float64),
                      ranks.cum[index.piece_high].astype(np.float64))


def _bound_distribution(
    z: FloatArray,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
) -> tuple[FloatArray, IntArray, IntArray]:
    """``_indexed_bound_distribution`` of sorted values ``z`` (all rows), without the empty
    pieces: (log weight, first cell, number of cells) per run of cells, the anchor last."""
    index = quantile_index(z, lower=low, upper=high)
    ranks = _ranks(index, None)
    log_weights, first, count = _indexed_bound_distribution(
        index, ranks, low, high, q, epsilon, max_rows, side, _piece_ranks(index, ranks))
    keep = count > 0
    return log_weights[keep], first[keep], count[keep]


def _indexed_bound_distribution(
    index: QuantileIndex,
    ranks: _Ranks,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
    pieces: PieceRanks,
) -> tuple[FloatArray, IntArray, IntArray]:
    """A calibrated bound's exponential mechanism, as pieces of cells of equal utility.

    The candidates are the BOUND_CELLS cells [c_j, c_j+1) of the domain plus one anchor; the
    bound is the chosen cell's left edge (lower bound) or right edge (upper bound), so a cell
    holding a tie answers on the safe side of it. Cell j has rank range [#{x < c_j},
    #{x < c_j+1}] (the last cell is closed) and utility -dist(t, range) with
    t = q(n-1) + 1/2 - K (lower) or + K (upper), K = ``calibrated_rank_offset``.

    The anchor (output ``lower``, or ``upper``: always on the safe side) stands for virtual
    ranks -1, -2, ... (n+1, n+2, ... for the upper bound) spaced as n rows spread evenly over
    the bounds would be, together with the T rows equal to that bound (clamped rows tie
    there): log weight ln(cells / ((n + n0)(1 - e^-ε'))) - ε'·max(0, t + 1 - T) (upper:
    ε'·max(0, n + 1 - T - t)). Adding a row changes the first term by at most
    -1/(n + n0) and the second by at most ε'·q one way or ε'(1-q) the other, so the log
    weight moves by at most ε' with n0 = 1/(ε'(1-q)) (upper: q and 1-q swap). Every cell's
    utility moves by at most 1, so the draw is the exponential mechanism with scores of
    sensitivity 1 per row: ε-DP (ε' = ε / (2·max_rows); ranks move by <= max_rows per unit).

    Cells of one piece share one rank range and one utility (``QuantileIndex``); grouping
    them keeps the cost O(n) whatever BOUND_CELLS is. Returns (log weight, first cell, number
    of cells) per piece (empty pieces: log weight -inf), the anchor last.
    """
    n = ranks.n
    cells = BOUND_CELLS
    per_rank = epsilon / (2.0 * max_rows)
    offset = calibrated_rank_offset(epsilon, max_rows)
    centre = q * (n - 1) + 0.5
    # The anchor's rank range: the virtual ranks beyond the edge, plus the rows tied at that
    # bound (clamping puts every out-of-range value there).
    if side == "lower":
        target = centre - offset
        at_bound = float(ranks.cum[index.at_bounds[0]])
        beyond, drift, anchor_cell = target + 1.0 - at_bound, 1.0 - q, 0
    else:
        target = centre + offset
        at_bound = float(n - ranks.cum[index.at_bounds[1]])
        beyond, drift, anchor_cell = n + 1.0 - at_bound - target, q, cells - 1
    log_weights = index.piece_log_count - per_rank * _distance(
        target, pieces.rank_low, pieces.rank_high
    )
    if drift > 0.0:
        n0 = 1.0 / (per_rank * drift)
        anchor = (
            math.log(cells / (n + n0))
            - math.log(-math.expm1(-per_rank))
            - per_rank * max(0.0, beyond)
        )
    else:  # q = 1 (lower) or q = 0 (upper): the bound is never near that edge's virtual ranks
        anchor = -math.inf
    return (
        np.append(log_weights, anchor),
        np.append(index.piece_first, anchor_cell),
        np.append(index.piece_count, 1),
    )


def _calibrated_bound(
    index: QuantileIndex,
    ranks: _Ranks,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
    rng: Rng,
    pieces: PieceRanks,
) -> float:
    """An ε-DP lower (or upper) bound failing w.p. ~5% on smooth data (see
    ``_indexed_bound_distribution``)."""
    log_weights, first, count = _indexed_bound_distribution(
        index, ranks, low, high, q, epsilon, max_rows, side, pieces)
    cell = _calibrated_cell(log_weights, first, count, rng)
    width = (high - low) / BOUND_CELLS
    edge = low + (cell if side == "lower" else cell + 1) * width
    return float(min(max(edge, low), high))


def _calibrated_cell(log_weights: FloatArray, first: IntArray, count: IntArray, rng: Rng) -> int:
    """The chosen cell of a calibrated bound, given its pieces (``_indexed_bound_distribution``).

    The uniform share of the mixture (see ``_sample_index``) is over the BOUND_CELLS cells, not
    over the pieces: how many pieces there are depends on the data. Inside the drawn piece the
    cell is exactly uniform among its ``size`` cells (integers, no float rounding: size depends
    on the data). The anchor's output equals cell 0's (lower) or the last cell's (upper), so
    the uniform share reaches it too.
    """
    piece = _exponential_index(log_weights, rng)  # drawn on both branches: the same work
    if _uniform_branch(rng):
        return discrete.uniform_below(rng, BOUND_CELLS)
    return int(first[piece]) + discrete.uniform_below(rng, int(count[piece]))
