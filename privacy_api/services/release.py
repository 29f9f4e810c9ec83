"""Bridge from a validated QueryPlan and cached columns to the pure `mechanisms` library.

This is the only module of the service that draws noise, and it does so only after the
ledger has committed the charge (see services/queries.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

import mechanisms as mech
from mechanisms import GroupedRelease, PrivacyEvent, Release
from mechanisms.moments import MAX_EXACT_ROWS, MomentStats, moment_grid, quantise

from ..domain.errors import InvalidRequest
from ..storage.columns import DatasetColumns
from ..storage.dataset_schema import DatasetSchema
from .query_plan import QueryPlan, group_codes, group_keys, row_mask


@dataclass(frozen=True)
class QueryCost:
    """The requested (epsilon, delta) and the mechanism runs the accountant composes."""

    epsilon: Decimal
    delta: Decimal
    events: tuple[PrivacyEvent, ...]


def _max_rows(schema: DatasetSchema) -> int:
    return schema.privacy_unit_max_rows if schema.privacy_unit_column else 1


def query_cost(plan: QueryPlan, schema: DatasetSchema, *, mechanism: str, epsilon: Decimal,
               delta: Decimal) -> QueryCost:
    try:
        events = mech.privacy_events_for(plan.aggregate,  # type: ignore[arg-type]
                                         epsilon=epsilon, delta=delta,
                                         mechanism=mechanism)  # type: ignore[arg-type]
    except mech.MechanismError as exc:
        raise InvalidRequest(str(exc), {"mechanism": [mechanism]}) from None
    # Everything the release will calibrate (grids, noise scales, intervals' widths) is checked
    # here, before the charge: nothing the data cannot change may fail after it.
    lower, upper = _bounds(plan, schema)
    agg = "count" if plan.aggregate == "histogram" else plan.aggregate
    try:
        mech.accuracy_for(agg, epsilon=mech.float_at_most(epsilon), delta=mech.float_at_most(delta),  # type: ignore[arg-type]
                          mechanism=mechanism,  # type: ignore[arg-type]
                          max_rows=_max_rows(schema), lower=lower, upper=upper)
    except mech.MechanismError as exc:
        raise InvalidRequest(str(exc), {"epsilon": [str(exc)]}) from None
    return QueryCost(epsilon, delta, events)


def _bounds(plan: QueryPlan, schema: DatasetSchema) -> tuple[float | None, float | None]:
    if plan.column is None:
        return None, None
    col = schema.column(plan.column)
    return col.lower, col.upper


def _accuracy(r: Release) -> dict[str, Any]:
    out: dict[str, Any] = {"noise_scale": float(r.noise_scale),
                           "ci95": [float(r.ci95[0]), float(r.ci95[1])]}
    # Present or absent by aggregate and column type only (public), never by the data.
    if r.ci95_worst_case is not None:
        out["ci95_worst_case"] = [float(r.ci95_worst_case[0]), float(r.ci95_worst_case[1])]
    if r.grid is not None:  # the public grid every released value is a multiple of
        out["grid"] = float(r.grid)
    return out


def _value(v: float) -> float | int:
    return v if isinstance(v, int) else float(v)


def release_answer(plan: QueryPlan, data: DatasetColumns, *, mechanism: str, epsilon: Decimal,
                   delta: Decimal) -> dict[str, Any]:
    """Draw the noisy answer. Returns {"result": ..., "accuracy": {...}} (JSON-ready)."""
    schema = data.schema
    # Rounded down: the mechanism never runs at more ε/δ than the ledger charges (the Decimal).
    common: dict[str, Any] = {"epsilon": mech.float_at_most(epsilon),
                              "delta": mech.float_at_most(delta),
                              "mechanism": mechanism, "max_rows": _max_rows(schema)}
    lower, upper = _bounds(plan, schema)
    if plan.aggregate == "quantile" and plan.column is not None:
        # The calibrated quantile interval assumes a smooth density near the quantile; an int
        # column is full of ties and would under-cover, so it gets the interval valid for
        # every dataset (same budget, wider).
        common["quantile_interval"] = ("worst_case" if schema.column(plan.column).type == "int"
                                       else "calibrated")
    mask = row_mask(plan, data)
    # Data-independent work: every path below reads all rows of the version (the filter is a
    # 0/1 weight per row, never an index), through per-version artefacts built from all rows
    # (bin codes, sorted orders); no array's size and no branch depends on what matches.

    if plan.aggregate == "histogram":
        assert plan.column is not None
        col = schema.column(plan.column)
        if col.numeric:
            assert lower is not None and upper is not None
            bins = plan.bins or 1
            codes = data.memoized(("histogram codes", plan.column, lower, upper, bins),
                                  lambda: (mech.histogram_codes(
                                      data.columns[plan.column].astype(np.float64),  # type: ignore[index]
                                      lower=lower, upper=upper, bins=bins),))[0]
            edges = plan.bin_edges
            labels: list[dict[str, Any]] = [{plan.column: [edges[i], edges[i + 1]]}
                                            for i in range(len(edges) - 1)]
        else:
            domain = col.domain()
            bins = len(domain)
            codes = data.memoized(("category codes", plan.column),
                                  lambda: (_category_codes(data, plan.column, bins),))[0]  # type: ignore[arg-type]
            labels = [{plan.column: v} for v in domain]
        grouped = mech.release_counts(_masked_bincount(codes, mask, bins), **common)
        return _grouped_answer(grouped, labels)

    if plan.group_by:
        keys = group_keys(plan, schema)
        groups = _GroupedRows(data, tuple(plan.group_by), len(keys), mask)
        if plan.aggregate == "count":
            grouped = mech.release_counts(groups.counts(), **common)
        elif plan.aggregate != "quantile":
            # sums, means and variances need only per-group moments: one O(rows) pass
            assert lower is not None and upper is not None and plan.column is not None
            stats = groups.moments(plan.column, lower, upper)
            grouped = mech.release_grouped(plan.aggregate,  # type: ignore[arg-type]
                                           stats, lower=lower, upper=upper, **common)
        else:
            assert plan.column is not None and lower is not None and upper is not None
            cells = tuple(_quantile(index, weights, plan, lower, upper, common)
                          for index, weights in groups.quantile_indexes(plan.column, lower,
                                                                        upper))
            grouped = GroupedRelease(cells=cells, epsilon=cells[0].epsilon,
                                     delta=cells[0].delta)
        return _grouped_answer(grouped, keys)

    if plan.aggregate == "quantile":
        assert plan.column is not None and lower is not None and upper is not None
        index = _quantile_index(data, plan.column, lower, upper)
        r = _quantile(index, mask, plan, lower, upper, common)
        return {"result": _value(r.value), "accuracy": _accuracy(r)}

    vals: MomentStats
    if plan.aggregate in MOMENT_AGGREGATES:
        assert lower is not None and upper is not None and plan.column is not None
        vals = _moments(data, plan.aggregate, plan.column, lower, upper, mask)
    else:  # count: only the number of rows matters (no array of that size is made)
        vals = MomentStats(data.n_rows if mask is None else int(np.count_nonzero(mask)), 0, 0, 0)
    r = mech.release_aggregate(plan.aggregate,  # type: ignore[arg-type]
                               vals, lower=lower, upper=upper, q=plan.quantile, **common)
    return {"result": _value(r.value), "accuracy": _accuracy(r)}


MOMENT_AGGREGATES = ("sum", "mean", "variance", "std")


# Which per-row grid units (mechanisms.moments.quantise) each aggregate reads.
_UNITS_READ = {"sum": ("total",), "mean": ("shifted",), "variance": ("shifted", "squares"),
               "std": ("shifted", "squares")}
_UNIT_INDEX = {"total": 0, "shifted": 1, "squares": 2}


def _units(data: DatasetColumns, column: str, lower: float,
           upper: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The column's per-row grid units (total, shifted, squares), cached per version.

    Exact integers of magnitude <= 2^30, held as float64 so that masked sums are BLAS dot
    products; those are exact while n·2^30 <= 2^53, so larger versions hold int64 instead."""
    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid = moment_grid(lower, upper)
        q = quantise(data.columns[column], grid)
        if data.n_rows > _FLOAT_EXACT_ROWS:
            return q.total.astype(np.int64), q.shifted.astype(np.int64), q.squares.astype(np.int64)
        return q.total, q.shifted, q.squares

    total, shifted, squares = data.memoized(("grid units", column, lower, upper), build)
    return total, shifted, squares


_FLOAT_EXACT_ROWS = 1 << 23


def _exact(total: np.floating[Any] | np.integer[Any] | float) -> int:
    return int(total)


def _masked_bincount(codes: np.ndarray, mask: np.ndarray | None, bins: int) -> np.ndarray:
    """Per-bin counts of the matching rows: a weighted bincount over all rows."""
    if mask is None:
        return np.bincount(codes, minlength=bins)
    # float weights are exact for counts below 2^53
    return np.bincount(codes, weights=mask.astype(np.float64), minlength=bins).astype(np.int64)


def _category_codes(data: DatasetColumns, column: str, categories: int) -> np.ndarray:
    codes = data.columns[column].astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= categories):
        # the stored data and the schema disagree: refuse rather than drop rows silently
        raise mech.InvalidDomain(f"codes must lie in [0, {categories})")
    return codes


def _quantile_index(data: DatasetColumns, column: str, lower: float,
                    upper: float) -> mech.QuantileIndex:
    """The column's sorted order and cell pieces over all rows, once per version and bounds."""
    cached = data.memoized(("quantile index", column, lower, upper),
                           lambda: mech.quantile_index(data.columns[column].astype(np.float64),
                                                       lower=lower, upper=upper))
    return mech.QuantileIndex(*cached)


def _quantile(index: mech.QuantileIndex, weights: np.ndarray | None, plan: QueryPlan,
              lower: float, upper: float, common: dict[str, Any]) -> Release:
    assert plan.quantile is not None
    return mech.release_quantile_indexed(index, weights, q=plan.quantile, lower=lower,
                                         upper=upper, epsilon=common["epsilon"],
                                         max_rows=common["max_rows"],
                                         interval=common["quantile_interval"])


def _moments(data: DatasetColumns, aggregate: str, column: str, lower: float, upper: float,
             mask: np.ndarray | None) -> MomentStats:
    """Exact MomentStats of the matching rows (the sums ``aggregate`` reads; the others 0),
    from the cached grid units: masked dot products instead of copying the matches out."""
    if data.n_rows >= MAX_EXACT_ROWS:
        raise InvalidRequest("dataset too large for exact sums")
    units = _units(data, column, lower, upper)
    sums = [0, 0, 0]
    if mask is None:
        for name in _UNITS_READ[aggregate]:
            sums[_UNIT_INDEX[name]] = _exact(units[_UNIT_INDEX[name]].sum())
        return MomentStats(data.n_rows, *sums)
    # a dot product with the 0/1 mask is ~10x faster than sum(where=mask) or a gather
    weights = mask.astype(units[0].dtype)
    for name in _UNITS_READ[aggregate]:
        sums[_UNIT_INDEX[name]] = _exact(units[_UNIT_INDEX[name]] @ weights)
    return MomentStats(int(np.count_nonzero(mask)), *sums)


class _GroupedRows:
    """The matching rows of each group, through a per-version cached group ordering.

    The rows are kept sorted by group once per version (a stable sort: rows of group 0 first,
    in row order), with the group boundaries; value columns are cached in that order too. A
    query then reduces contiguous segments instead of scattering every row into its group,
    and a filter costs one gather of the mask into that order.
    """

    def __init__(self, data: DatasetColumns, group_by: tuple[str, ...], n_groups: int,
                 mask: np.ndarray | None) -> None:
        self.data, self.group_by, self.n_groups = data, group_by, n_groups
        self.order, bounds = data.memoized(("group order", group_by), self._build_order)
        self.sizes = np.diff(bounds)
        # reduceat sums from each start to the next one, so it is given the starts of the
        # non-empty groups only (empty ones lie in between and contribute nothing)
        self.nonempty = np.flatnonzero(self.sizes)
        self.starts = bounds[:-1][self.nonempty]
        self.bounds = bounds
        self.mask = None if mask is None else mask[self.order]

    def _build_order(self) -> tuple[np.ndarray, np.ndarray]:
        codes = group_codes(self.data, self.group_by)
        order = _group_order(codes, self.n_groups)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=self.n_groups))))
        return order, bounds.astype(np.int64)

    def _segment_sums(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Per-group sums of `values` (rows in group order) along their first axis, each row
        times its weight when `weights` (0/1 for a filter) is given."""
        groups, b = self.n_groups, self.bounds
        dtype = np.float64 if values.dtype.kind == "f" else np.int64
        if groups <= 64:  # few groups: a SIMD sum (or a BLAS product) per slice is fastest
            if weights is None:
                parts = [values[b[i]:b[i + 1]].sum(axis=0, dtype=dtype) for i in range(groups)]
            else:
                parts = [weights[b[i]:b[i + 1]] @ values[b[i]:b[i + 1]] for i in range(groups)]
            return np.array(parts, dtype=dtype).reshape(groups, *values.shape[1:])
        if weights is not None:
            values = values * (weights[:, None] if values.ndim == 2 else weights)
        out = np.zeros((groups, *values.shape[1:]), dtype=dtype)
        if self.starts.size:
            out[self.nonempty] = np.add.reduceat(values, self.starts, axis=0, dtype=dtype)
        return out

    def counts(self) -> np.ndarray:
        return self.sizes if self.mask is None else self._segment_sums(self.mask)

    def _triples(self, column: str, lower: float, upper: float) -> np.ndarray:
        """The rows' grid units (total, shifted, squares) side by side in group order."""
        def build() -> tuple[np.ndarray]:
            units = _units(self.data, column, lower, upper)
            return (np.column_stack([u[self.order] for u in units]),)

        key = ("grouped units", column, lower, upper, self.group_by)
        return self.data.memoized(key, build)[0]

    def moments(self, column: str, lower: float, upper: float) -> list[MomentStats]:
        """Exact per-group MomentStats (integer unit sums; see `_units` for exactness)."""
        triples = self._triples(column, lower, upper)
        if self.mask is None:  # exact per-version sums, the same for every query: keep them
            totals = self.data.memoized(("grouped sums", column, lower, upper, self.group_by),
                                        lambda: (self._segment_sums(triples),))[0]
        else:
            totals = self._segment_sums(triples, self.mask.astype(triples.dtype))
        return [MomentStats(int(n), int(t), int(s), int(q))
                for n, (t, s, q) in zip(self.counts(), totals, strict=True)]

    def quantile_indexes(self, column: str, lower: float, upper: float
                         ) -> list[tuple[mech.QuantileIndex, np.ndarray | None]]:
        """Each group's quantile index over all its rows (once per version), with the filter's
        0/1 weights of those rows: every group's work is fixed by the version's group sizes."""
        def build() -> tuple[np.ndarray, ...]:
            col = self.data.columns[column].astype(np.float64)[self.order]
            b = self.bounds
            indexes = [mech.quantile_index(col[b[i]:b[i + 1]], lower=lower, upper=upper)
                       for i in range(self.n_groups)]
            return tuple(a for index in indexes for a in index)

        flat = self.data.memoized(("grouped quantile index", column, lower, upper,
                                   self.group_by), build)
        width = len(mech.QuantileIndex._fields)
        b = self.bounds
        return [(mech.QuantileIndex(*flat[i * width:(i + 1) * width]),
                 None if self.mask is None else self.mask[b[i]:b[i + 1]])
                for i in range(self.n_groups)]


def _group_order(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """The stable sort permutation of the group codes (rows of group 0 first, in row order).

    A stable sort's permutation is unique, so the narrower dtype changes nothing but speed:
    NumPy radix-sorts 16-bit integers (O(n)) instead of merge-sorting int64 (~3x slower).
    """
    if n_groups <= np.iinfo(np.int16).max + 1:
        codes = codes.astype(np.int16)
    return np.argsort(codes, kind="stable")


def _grouped_answer(grouped: GroupedRelease, keys: list[dict[str, Any]]) -> dict[str, Any]:
    cells = grouped.cells
    result = []
    for key, cell in zip(keys, cells, strict=True):
        row: dict[str, Any] = {"group": key, "value": _value(cell.value),
                               "ci95": [float(cell.ci95[0]), float(cell.ci95[1])]}
        if cell.ci95_worst_case is not None:  # by aggregate and column type, as _accuracy
            row["ci95_worst_case"] = [float(cell.ci95_worst_case[0]),
                                      float(cell.ci95_worst_case[1])]
        result.append(row)
    # The headline describes the whole table: the largest standard error of any group, and the
    # grid every value is on. Intervals belong to the groups (one group's would mislead).
    accuracy: dict[str, Any] = {"noise_scale": max(float(c.noise_scale) for c in cells)}
    if cells[0].grid is not None:
        accuracy["grid"] = float(cells[0].grid)
    return {"result": result, "accuracy": accuracy}


def estimate_accuracy(plan: QueryPlan, schema: DatasetSchema, *, mechanism: str,
                      epsilon: Decimal, delta: Decimal) -> dict[str, Any]:
    lower, upper = _bounds(plan, schema)
    agg = "count" if plan.aggregate == "histogram" else plan.aggregate
    acc = mech.accuracy_for(agg, epsilon=mech.float_at_most(epsilon), delta=mech.float_at_most(delta),  # type: ignore[arg-type]
                            mechanism=mechanism,  # type: ignore[arg-type]
                            max_rows=_max_rows(schema), lower=lower, upper=upper)
    half = acc.ci95_halfwidth
    if half is not None:
        note = "data-independent: exact for every answer"
    else:
        note = ("depends on the private number of matching rows; see components "
                "(noise standard deviation of each noisy part)")
    out: dict[str, Any] = {
        "noise_scale": float(acc.noise_scale) if acc.noise_scale is not None else None,
        "ci95_half_width": float(half) if half is not None else None,
        "ci95": [-float(half), float(half)] if half is not None else None,
        "components": {k: float(v) for k, v in acc.components.items()},
        "grid": float(acc.grid) if acc.grid is not None else None,
        "note": note,
    }
    return out
