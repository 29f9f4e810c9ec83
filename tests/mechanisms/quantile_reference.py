"""The calibrated quantile bound as it was before ``QuantileIndex`` (matched rows only, sorted):
kept verbatim as the oracle the indexed, data-independent implementation must agree with."""

# ruff: noqa
from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np

from mechanisms.quantile import BOUND_CELLS, calibrated_rank_offset, _distance

FloatArray = np.ndarray
IntArray = np.ndarray


class CellRuns(NamedTuple):
    """The BOUND_CELLS cells of the domain as runs of equal rank range (sorted data ``z``):
    each run's first cell, number of cells, and rank range [rank_low, rank_high]."""

    first: IntArray
    cells: IntArray
    rank_low: FloatArray
    rank_high: FloatArray


def _cell_runs(z: FloatArray, low: float, high: float) -> CellRuns:
    """``CellRuns`` of sorted ``z``: O(n), independent of ε, q and the side of the bound."""
    n = z.size
    cells = BOUND_CELLS
    width = (high - low) / cells
    if n:
        index = np.clip(np.floor((z - low) / width), 0, cells - 1).astype(np.int64)
        # Round-off: make low + index·width <= z < low + (index + 1)·width, as the outputs are.
        index -= (low + index * width > z) & (index > 0)
        index += (low + (index + 1) * width <= z) & (index < cells - 1)
        change = np.flatnonzero(np.diff(index)) + 1
        starts = np.concatenate(([0], change))  # first order statistic of each occupied cell
        occupied = index[starts]
        ends = np.append(change, n)
        run_first = np.concatenate(([0], occupied + 1))  # the empty runs around them
        run_count = np.concatenate((occupied, [cells])) - run_first
        run_rank = np.concatenate(([0], ends))
        first = np.concatenate((occupied, run_first))
        count = np.concatenate((np.ones(occupied.size, dtype=np.int64), run_count))
        rank_low = np.concatenate((starts, run_rank)).astype(np.float64)
        rank_high = np.concatenate((ends, run_rank)).astype(np.float64)
        keep = count > 0
        first, count, rank_low, rank_high = first[keep], count[keep], rank_low[keep], rank_high[keep]
    else:
        first = np.zeros(1, dtype=np.int64)
        count = np.full(1, cells, dtype=np.int64)
        rank_low = rank_high = np.zeros(1)
    return CellRuns(first, count, rank_low, rank_high)


def _bound_distribution(
    z: FloatArray,
    low: float,
    high: float,
    q: float,
    epsilon: float,
    max_rows: int,
    side: Literal["lower", "upper"],
    runs: CellRuns | None = None,
) -> tuple[FloatArray, IntArray, IntArray]:
    """A calibrated bound's exponential mechanism, as runs of cells of equal utility.

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

    Empty cells between two occupied ones share one rank and one utility; grouping them keeps
    the cost O(n) whatever BOUND_CELLS is. Returns (log weight, first cell, number of cells)
    per run, the anchor last.
    """
    n = z.size
    cells = BOUND_CELLS
    first, count, rank_low, rank_high = runs if runs is not None else _cell_runs(z, low, high)

    per_rank = epsilon / (2.0 * max_rows)
    offset = calibrated_rank_offset(epsilon, max_rows)
    centre = q * (n - 1) + 0.5
    # The anchor's rank range: the virtual ranks beyond the edge, plus the rows tied at that
    # bound (clamping puts every out-of-range value there).
    if side == "lower":
        target = centre - offset
        at_bound = float(np.searchsorted(z, low, side="right"))
        beyond, drift, anchor_cell = target + 1.0 - at_bound, 1.0 - q, 0
    else:
        target = centre + offset
        at_bound = float(n - np.searchsorted(z, high, side="left"))
        beyond, drift, anchor_cell = n + 1.0 - at_bound - target, q, cells - 1
    log_weights = np.log(count.astype(np.float64)) - per_rank * _distance(
        target, rank_low, rank_high
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
        np.append(first, anchor_cell),
        np.append(count, 1),
    )


