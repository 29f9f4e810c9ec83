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

from ..domain.errors import InvalidRequest
from ..storage.columns import DatasetColumns
from ..storage.dataset_schema import DatasetSchema
from . import moment_sums
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
                                  lambda: (_histogram_codes(data, plan.column, lower, upper,  # type: ignore[arg-type]
                                                            bins),))[0]
            edges = plan.bin_edges
            labels: list[dict[str, Any]] = [{plan.column: [edges[i], edges[i + 1]]}
                                            for i in range(len(edges) - 1)]
        else:
            domain = col.domain()
            bins = len(domain)
            codes = _category_codes(data, plan.column, bins)
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
            stats = groups.moments(plan.column, lower, upper, plan.aggregate)
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


def _masked_bincount(codes: np.ndarray, mask: np.ndarray | None, bins: int) -> np.ndarray:
    """Per-bin counts of the matching rows: a weighted bincount over all rows, by chunks (the
    codes are narrow integers; bincount widens what it is given, a chunk at a time here)."""
    out = np.zeros(bins, dtype=np.int64)
    for a in range(0, codes.size, moment_sums.CHUNK):
        part = codes[a:a + moment_sums.CHUNK]
        if mask is None:
            out += np.bincount(part, minlength=bins)
        else:  # float weights are exact for counts below 2^53
            weights = mask[a:a + moment_sums.CHUNK].astype(np.float64)
            out += np.bincount(part, weights=weights, minlength=bins).astype(np.int64)
    return out


def _histogram_codes(data: DatasetColumns, column: str, lower: float, upper: float,
                     bins: int) -> np.ndarray:
    """Every row's bin, in the narrowest integer type that holds `bins` (kept per version)."""
    dtype = np.int16 if bins <= np.iinfo(np.int16).max else np.int32
    values = data.columns[column]
    out = np.empty(data.n_rows, dtype=dtype)
    for a in range(0, data.n_rows, moment_sums.CHUNK):
        part = values[a:a + moment_sums.CHUNK].astype(np.float64)
        out[a:a + part.size] = mech.histogram_codes(part, lower=lower, upper=upper, bins=bins)
    return out


def _category_codes(data: DatasetColumns, column: str, categories: int) -> np.ndarray:
    """The stored codes themselves (int32), checked once per version against the domain."""
    codes = data.columns[column]

    def check() -> tuple[np.ndarray]:
        if codes.size and (codes.min() < 0 or codes.max() >= categories):
            # the stored data and the schema disagree: refuse rather than drop rows silently
            raise mech.InvalidDomain(f"codes must lie in [0, {categories})")
        return (np.zeros(0, dtype=np.int8),)

    data.memoized(("category codes checked", column, categories), check)
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
    """Exact MomentStats of the matching rows (the sums ``aggregate`` reads; the others 0)."""
    return moment_sums.moment_sums(data, aggregate, column, lower, upper, mask)


class _GroupedRows:
    """The matching rows of each group of a grouped query.

    Counts and moments are weighted bincounts over the group codes, chunk by chunk
    (`moment_sums`): nothing of the version's size is kept for them. Quantiles need each
    group's rows together, so they read a per-version stable ordering of the rows by group
    (built on first use) and the filter's weights gathered into that order.
    """

    def __init__(self, data: DatasetColumns, group_by: tuple[str, ...], n_groups: int,
                 mask: np.ndarray | None) -> None:
        self.data, self.group_by, self.n_groups = data, group_by, n_groups
        self.mask = mask

    def _build_order(self) -> tuple[np.ndarray, np.ndarray]:
        codes = group_codes(self.data, self.group_by)
        order = _group_order(codes, self.n_groups)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=self.n_groups))))
        return order, bounds.astype(np.int64)

    def counts(self) -> np.ndarray:
        return moment_sums.grouped_counts(self.data, self.group_by, self.n_groups, self.mask)

    def moments(self, column: str, lower: float, upper: float,
                aggregate: str = "all") -> list[MomentStats]:
        """Exact per-group MomentStats: the sums `aggregate` reads ("all": every sum)."""
        return moment_sums.grouped_moment_sums(self.data, self.group_by, self.n_groups, column,
                                               lower, upper, aggregate, self.mask)

    def quantile_indexes(self, column: str, lower: float, upper: float
                         ) -> list[tuple[mech.QuantileIndex, np.ndarray | None]]:
        """Each group's quantile index over all its rows (once per version), with the filter's
        0/1 weights of those rows: every group's work is fixed by the version's group sizes."""
        order, b = self.data.memoized(("group order", self.group_by), self._build_order)

        def build() -> tuple[np.ndarray, ...]:
            col = self.data.columns[column].astype(np.float64)[order]
            indexes = [mech.quantile_index(col[b[i]:b[i + 1]], lower=lower, upper=upper)
                       for i in range(self.n_groups)]
            return tuple(a for index in indexes for a in index)

        flat = self.data.memoized(("grouped quantile index", column, lower, upper,
                                   self.group_by), build)
        width = len(mech.QuantileIndex._fields)
        mask = None if self.mask is None else self.mask[order]
        return [(mech.QuantileIndex(*flat[i * width:(i + 1) * width]),
                 None if mask is None else mask[b[i]:b[i + 1]])
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
