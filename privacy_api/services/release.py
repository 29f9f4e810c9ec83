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
from mechanisms.moments import MomentStats

from ..columns import DatasetColumns
from ..dataset_schema import DatasetSchema
from ..errors import InvalidRequest
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
    return QueryCost(epsilon, delta, events)


def _bounds(plan: QueryPlan, schema: DatasetSchema) -> tuple[float | None, float | None]:
    if plan.column is None:
        return None, None
    col = schema.column(plan.column)
    return col.lower, col.upper


def _accuracy(r: Release) -> dict[str, Any]:
    out: dict[str, Any] = {"noise_scale": float(r.noise_scale),
                           "ci95": [float(r.ci95[0]), float(r.ci95[1])]}
    if r.ci95_worst_case is not None:  # ci95 is calibrated, not valid for every dataset
        out["ci95_worst_case"] = [float(r.ci95_worst_case[0]), float(r.ci95_worst_case[1])]
    return out


def _value(v: float) -> float | int:
    return v if isinstance(v, int) else float(v)


def release_answer(plan: QueryPlan, data: DatasetColumns, *, mechanism: str, epsilon: Decimal,
                   delta: Decimal) -> dict[str, Any]:
    """Draw the noisy answer. Returns {"result": ..., "accuracy": {...}} (JSON-ready)."""
    schema = data.schema
    common: dict[str, Any] = {"epsilon": float(epsilon), "delta": float(delta),
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
        vals = _moments(data, plan.column, lower, upper, mask)
    else:  # count: only the number of rows matters (no array of that size is made)
        vals = MomentStats(data.n_rows if mask is None else int(np.count_nonzero(mask)), 0.0, 0.0)
    r = mech.release_aggregate(plan.aggregate,  # type: ignore[arg-type]
                               vals, lower=lower, upper=upper, q=plan.quantile, **common)
    return {"result": _value(r.value), "accuracy": _accuracy(r)}


MOMENT_AGGREGATES = ("sum", "mean", "variance", "std")


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


def _moments(data: DatasetColumns, column: str, lower: float, upper: float,
             mask: np.ndarray | None) -> MomentStats:
    """mechanisms.moment_stats of the matching rows, from the cached shifted column: masked
    reductions instead of copying the matching values out."""
    shifted, squares = data.shifted(column, lower, upper)
    if mask is None:
        return MomentStats(data.n_rows, float(shifted.sum()), float(squares.sum()))
    # a dot product with the 0/1 mask is ~10x faster than sum(where=mask) or a gather
    weights = mask.astype(np.float64)
    return MomentStats(int(np.count_nonzero(mask)), float(shifted @ weights),
                       float(squares @ weights))


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
        dtype = np.float64 if values.dtype.kind == "f" or weights is not None else np.int64
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

    def _pairs(self, column: str, lower: float, upper: float) -> np.ndarray:
        """(shifted value, its square) side by side in group order: one read of both per group."""
        def build() -> tuple[np.ndarray]:
            shifted, squares = self.data.shifted(column, lower, upper)
            return (np.column_stack((shifted[self.order], squares[self.order])),)

        return self.data.memoized(("grouped pairs", column, lower, upper, self.group_by), build)[0]

    def moments(self, column: str, lower: float, upper: float) -> list[MomentStats]:
        pairs = self._pairs(column, lower, upper)
        if self.mask is None:  # exact per-version sums, the same for every query: keep them
            totals = self.data.memoized(("grouped sums", column, lower, upper, self.group_by),
                                        lambda: (self._segment_sums(pairs),))[0]
        else:
            totals = self._segment_sums(pairs, self.mask.astype(np.float64))
        return [MomentStats(int(n), float(t), float(q))
                for n, (t, q) in zip(self.counts(), totals, strict=True)]

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
    result = [{"group": k, "value": _value(c.value), "ci95": [float(c.ci95[0]), float(c.ci95[1])]}
              for k, c in zip(keys, cells, strict=True)]
    # The headline accuracy is the widest cell's: a safe summary for the whole table.
    widest = max(cells, key=lambda c: c.noise_scale)
    return {"result": result, "accuracy": _accuracy(widest)}


def estimate_accuracy(plan: QueryPlan, schema: DatasetSchema, *, mechanism: str,
                      epsilon: Decimal, delta: Decimal) -> dict[str, Any]:
    lower, upper = _bounds(plan, schema)
    agg = "count" if plan.aggregate == "histogram" else plan.aggregate
    acc = mech.accuracy_for(agg, epsilon=float(epsilon), delta=float(delta),  # type: ignore[arg-type]
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
        "note": note,
    }
    return out
