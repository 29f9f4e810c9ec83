"""Exact integer sums of grid units over a version's rows, in passes of CHUNK rows.

What sums, means and variances read (`mechanisms.moments.MomentStats`) are sums of per-row
units on a public grid, each an integer of magnitude <= 2^30. Issue 14 bounds what a version
costs to hold, so the service keeps at most one int32 array per (column, bounds, kind) it has
been asked for (4 bytes a row, shared on the host like the columns) and never a float64 or
int64 copy of the rows: the squares, read only by variance and std, are recomputed from the
column each time, and grouped sums are weighted `bincount`s over the group codes, chunk by
chunk, instead of the rows reordered by group.

Exactness: a chunk's sum (or a group's share of it) is at most CHUNK·2^30 = 2^47 in magnitude,
so float64 holds every partial sum of integers exactly whatever the summation order (BLAS
dots, pairwise sums, bincount); chunks are added in int64. Work: every row of the version is
read whatever the filter matches (the filter is a 0/1 weight), so the time is fixed by the
version's size and the query's public shape (tests/services/test_data_independent_work.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mechanisms.moments import MAX_EXACT_ROWS, MomentStats, moment_grid, quantise_unit

from ..domain.errors import InvalidRequest
from ..storage.columns import DatasetColumns

# Rows per pass: float64-exact (above) and small enough that a pass's temporaries (a few
# arrays of CHUNK float64s, 1 MiB each) stay in cache and never grow the heap.
CHUNK = 1 << 17

# Which units each aggregate reads.
UNITS_READ: dict[str, tuple[str, ...]] = {
    "sum": ("total",), "mean": ("shifted",), "variance": ("shifted", "squares"),
    "std": ("shifted", "squares"), "all": ("total", "shifted", "squares")}
_CACHED_KINDS = ("total", "shifted")


def _spans(n: int) -> Iterator[tuple[int, int]]:
    for a in range(0, n, CHUNK):
        yield a, min(a + CHUNK, n)


def _check_size(data: DatasetColumns) -> None:
    if data.n_rows >= MAX_EXACT_ROWS:
        raise InvalidRequest("dataset too large for exact sums")


def cached_units(data: DatasetColumns, column: str, lower: float, upper: float,
                 kind: str) -> np.ndarray:
    """The column's per-row `kind` units as int32, built once per version (chunk by chunk, so
    the build's peak is the int32 array plus one chunk)."""
    assert kind in _CACHED_KINDS

    def build() -> tuple[np.ndarray]:
        grid = moment_grid(lower, upper)
        values = data.columns[column]
        out = np.empty(data.n_rows, dtype=np.int32)
        for a, b in _spans(data.n_rows):
            out[a:b] = quantise_unit(values[a:b], grid, kind)
        return (out,)

    return data.memoized(("grid units", kind, column, lower, upper), build)[0]


def _unit_chunks(data: DatasetColumns, column: str, lower: float, upper: float,
                 kind: str) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, end, float64 units of rows start..end) over the whole version."""
    if kind in _CACHED_KINDS:
        units = cached_units(data, column, lower, upper, kind)
        for a, b in _spans(data.n_rows):
            yield a, b, units[a:b].astype(np.float64)
    else:
        grid = moment_grid(lower, upper)
        values = data.columns[column]
        for a, b in _spans(data.n_rows):
            yield a, b, quantise_unit(values[a:b], grid, kind)


def moment_sums(data: DatasetColumns, aggregate: str, column: str, lower: float, upper: float,
                mask: np.ndarray | None) -> MomentStats:
    """Exact MomentStats of the matching rows: the sums `aggregate` reads, the others 0."""
    _check_size(data)
    sums = dict.fromkeys(("total", "shifted", "squares"), 0)
    for kind in UNITS_READ[aggregate]:
        total = 0
        for a, b, units in _unit_chunks(data, column, lower, upper, kind):
            # a dot product with the 0/1 mask is ~10x faster than sum(where=mask) or a gather
            part = units.sum() if mask is None else units @ mask[a:b].astype(np.float64)
            total += int(part)
        sums[kind] = total
    count = data.n_rows if mask is None else int(np.count_nonzero(mask))
    return MomentStats(count, sums["total"], sums["shifted"], sums["squares"])


def group_codes_chunk(data: DatasetColumns, group_by: Sequence[str], a: int,
                      b: int) -> np.ndarray:
    """Flat group index (as in `query_plan.group_keys`) of rows a..b."""
    if len(group_by) == 1:  # the codes are the category column itself (bincount widens them)
        return data.columns[group_by[0]][a:b]
    codes = np.zeros(b - a, dtype=np.int64)
    for name in group_by:
        codes *= len(data.schema.column(name).domain())
        codes += data.columns[name][a:b]
    return codes


def grouped_counts(data: DatasetColumns, group_by: Sequence[str], groups: int,
                   mask: np.ndarray | None) -> np.ndarray:
    if mask is None:  # the same for every query of the version: kept (groups int64s)
        return data.memoized(("group sizes", tuple(group_by)),
                             lambda: (_grouped_counts(data, group_by, groups, None),))[0]
    return _grouped_counts(data, group_by, groups, mask)


def _grouped_counts(data: DatasetColumns, group_by: Sequence[str], groups: int,
                    mask: np.ndarray | None) -> np.ndarray:
    out = np.zeros(groups, dtype=np.int64)
    for a, b in _spans(data.n_rows):
        codes = group_codes_chunk(data, group_by, a, b)
        if mask is None:
            out += np.bincount(codes, minlength=groups)
        else:
            weights = mask[a:b].astype(np.float64)
            out += np.bincount(codes, weights=weights, minlength=groups).astype(np.int64)
    return out


def grouped_moment_sums(data: DatasetColumns, group_by: Sequence[str], groups: int, column: str,
                        lower: float, upper: float, aggregate: str,
                        mask: np.ndarray | None) -> list[MomentStats]:
    """Exact per-group MomentStats of the matching rows (the sums `aggregate` reads)."""
    _check_size(data)
    counts = grouped_counts(data, group_by, groups, mask)
    sums = {k: np.zeros(groups, dtype=np.int64) for k in ("total", "shifted", "squares")}
    for kind in UNITS_READ[aggregate]:
        if mask is None:  # per-version sums, the same for every query: kept (groups int64s)
            key = ("grouped sums", kind, column, lower, upper, tuple(group_by))
            sums[kind] = data.memoized(key, lambda kind=kind: (_grouped_unit_sums(  # type: ignore[misc]
                data, group_by, groups, column, lower, upper, kind, None),))[0]
        else:
            sums[kind] = _grouped_unit_sums(data, group_by, groups, column, lower, upper, kind,
                                            mask)
    return [MomentStats(int(n), int(t), int(s), int(q)) for n, t, s, q in
            zip(counts, sums["total"], sums["shifted"], sums["squares"], strict=True)]


def _grouped_unit_sums(data: DatasetColumns, group_by: Sequence[str], groups: int, column: str,
                       lower: float, upper: float, kind: str,
                       mask: np.ndarray | None) -> np.ndarray:
    acc = np.zeros(groups, dtype=np.int64)
    for a, b, units in _unit_chunks(data, column, lower, upper, kind):
        codes = group_codes_chunk(data, group_by, a, b)
        if mask is not None:
            units *= mask[a:b]
        acc += np.bincount(codes, weights=units, minlength=groups).astype(np.int64)
    return acc
