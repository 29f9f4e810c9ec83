"""Validate an analyst's query against the public schema and evaluate its filters.

A plan only ever refers to public schema facts (columns, bounds, category domains), so its
canonical form can be fingerprinted for replay and logged without revealing any data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..domain.errors import InvalidRequest
from ..storage.columns import DatasetColumns
from ..storage.dataset_schema import Column, DatasetSchema

AGGREGATES = ("count", "sum", "mean", "variance", "std", "histogram", "quantile")
NEEDS_NUMERIC = ("sum", "mean", "variance", "std", "quantile")
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "between")
MAX_GROUPS = 10_000
MAX_BINS = 1_000
MAX_FILTERS = 20


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any  # normalised: category codes, floats, bools

    def canonical(self) -> list[Any]:
        return [self.column, self.op, self.value]


@dataclass(frozen=True)
class QueryPlan:
    aggregate: str
    column: str | None
    filters: tuple[Filter, ...]
    group_by: tuple[str, ...]
    quantile: float | None = None
    bins: int | None = None
    # histogram over a numeric column: equal-width bin edges over the public bounds
    bin_edges: tuple[float, ...] = field(default=())

    def canonical(self) -> dict[str, Any]:
        return {
            "aggregate": self.aggregate,
            "column": self.column,
            "where": [f.canonical() for f in sorted(
                self.filters, key=lambda f: (f.column, f.op, repr(f.value)))],
            "group_by": list(self.group_by),
            "quantile": self.quantile,
            "bins": self.bins,
        }

    def columns_used(self) -> list[str]:
        cols = [self.column] if self.column else []
        cols += [f.column for f in self.filters] + list(self.group_by)
        return sorted(set(cols))


def fingerprint(plan: QueryPlan, mechanism: str, epsilon: str, delta: str) -> str:
    payload = orjson.dumps(
        {"plan": plan.canonical(), "mechanism": mechanism, "epsilon": epsilon, "delta": delta},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(payload).hexdigest()


def build_plan(schema: DatasetSchema, spec: dict[str, Any]) -> QueryPlan:
    """Check the query against the schema, gathering every problem into one 422."""
    errors: dict[str, list[str]] = {}

    def err(where: str, msg: str) -> None:
        errors.setdefault(where, []).append(msg)

    aggregate = spec["aggregate"]
    column_name = spec.get("column")
    column: Column | None = None
    if column_name is not None:
        if not schema.has(column_name):
            err("column", f"unknown column {column_name!r}")
        else:
            column = schema.column(column_name)
    if aggregate in NEEDS_NUMERIC:
        if column_name is None:
            err("column", f"{aggregate} needs a numeric column")
        elif column is not None and not column.numeric:
            err("column", f"{aggregate} needs a float or int column, {column_name!r} is {column.type}")
    elif aggregate == "count" and column_name is not None:
        err("column", "count takes no column (it counts rows)")
    quantile = spec.get("quantile")
    if aggregate == "quantile":
        if quantile is None:
            err("quantile", "quantile needs a quantile in [0, 1] (0.5 is the median)")
        elif not (isinstance(quantile, int | float) and 0 <= quantile <= 1):
            err("quantile", "must be within [0, 1]")
    elif quantile is not None:
        err("quantile", "only the quantile aggregate takes a quantile")
    bins = spec.get("bins")
    edges: tuple[float, ...] = ()
    if aggregate == "histogram":
        if column_name is None:
            err("column", "histogram needs a column")
        elif column is not None:
            if column.numeric:
                if bins is None:
                    err("bins", "a histogram of a numeric column needs a number of bins")
                elif not (isinstance(bins, int) and 1 <= bins <= MAX_BINS):
                    err("bins", f"must be an integer from 1 to {MAX_BINS}")
                else:
                    assert column.lower is not None and column.upper is not None
                    edges = tuple(float(x) for x in np.linspace(column.lower, column.upper, bins + 1))
            elif column.groupable:
                if bins is not None:
                    err("bins", "a categorical histogram has one bin per public category")
            else:
                err("column", f"cannot build a histogram of a {column.type} column")
    elif bins is not None:
        err("bins", "only histograms take bins")
    if column is not None and column.type == "id":
        err("column", "the privacy-unit identifier cannot be aggregated")

    filters: list[Filter] = []
    where = spec.get("where") or []
    if len(where) > MAX_FILTERS:
        err("where", f"at most {MAX_FILTERS} filters")
        where = []
    for i, f in enumerate(where):
        try:
            filters.append(_filter(schema, f))
        except ValueError as exc:
            err(f"where.{i}", str(exc))

    group_by = tuple(spec.get("group_by") or ())
    groups = 1
    if len(set(group_by)) != len(group_by):
        err("group_by", "columns repeat")
    for name in group_by:
        if not schema.has(name):
            err("group_by", f"unknown column {name!r}")
            continue
        col = schema.column(name)
        if not col.groupable:
            err("group_by", f"{name!r} is {col.type}: group only by category or bool columns "
                            "(their keys are public)")
            continue
        groups *= len(col.domain())
    if groups > MAX_GROUPS:
        err("group_by", f"{groups} groups: at most {MAX_GROUPS}")
    if aggregate == "histogram" and group_by:
        err("group_by", "histograms cannot be grouped; use group_by with count instead")
    if errors:
        raise InvalidRequest("invalid query", errors)
    return QueryPlan(aggregate, column_name, tuple(filters), group_by,
                     float(quantile) if quantile is not None else None, bins, edges)


def _filter(schema: DatasetSchema, f: dict[str, Any]) -> Filter:
    name, op, value = f.get("column"), f.get("op"), f.get("value")
    if not isinstance(name, str) or not schema.has(name):
        raise ValueError(f"unknown column {name!r}")
    col = schema.column(name)
    if op not in OPS:
        raise ValueError(f"op must be one of {' '.join(OPS)}")
    if col.type == "id":
        raise ValueError("cannot filter on the privacy-unit identifier")
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > 1000:
            raise ValueError("'in' needs a non-empty list (at most 1000 values)")
        return Filter(name, op, sorted({_scalar(col, v) for v in value}, key=repr))
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("'between' needs [low, high]")
        if not col.numeric:
            raise ValueError("'between' applies to numeric columns")
        lo, hi = (_scalar(col, v) for v in value)
        return Filter(name, op, [lo, hi])
    if op in ("<", "<=", ">", ">=") and not col.numeric:
        raise ValueError(f"{op!r} applies to numeric columns")
    return Filter(name, op, _scalar(col, value))


def _scalar(col: Column, v: Any) -> Any:
    if col.numeric:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{col.name} compares with finite numbers")
        return float(v)
    if col.type == "bool":
        if not isinstance(v, bool):
            raise ValueError(f"{col.name} compares with true or false")
        return v
    if not isinstance(v, str) or v not in col.categories:
        raise ValueError(f"{v!r} is not a category of {col.name}")
    return v


def row_mask(plan: QueryPlan, data: DatasetColumns) -> np.ndarray | None:
    """Boolean mask of the rows matching every filter (None means: all rows)."""
    mask: np.ndarray | None = None
    for f in plan.filters:
        col = data.schema.column(f.column)
        arr = data.columns[f.column]
        m = _compare(col, arr, f)
        mask = m if mask is None else (mask & m)
    return mask


def _code(col: Column, v: Any) -> Any:
    if col.type == "category":
        return col.categories.index(v)
    return v


def _compare(col: Column, arr: np.ndarray, f: Filter) -> np.ndarray:
    op, v = f.op, f.value
    if op == "in":
        return np.isin(arr, [_code(col, x) for x in v])
    if op == "between":
        between: np.ndarray = np.logical_and(arr >= v[0], arr <= v[1])
        return between
    c = _code(col, v)
    compare = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
               ">": np.greater, ">=": np.greater_equal}[op]
    result: np.ndarray = compare(arr, c)
    return result


def group_keys(plan: QueryPlan, schema: DatasetSchema) -> list[dict[str, Any]]:
    """The public key of every group (all of them, even empty), in flat-index order."""
    keys: list[dict[str, Any]] = [{}]
    for name in plan.group_by:
        keys = [{**k, name: v} for k in keys for v in schema.column(name).domain()]
    return keys


def group_codes(data: DatasetColumns, group_by: Sequence[str]) -> np.ndarray:
    """Flat group index per row, matching the order of `group_keys`."""
    codes: np.ndarray | None = None
    for name in group_by:
        size = len(data.schema.column(name).domain())
        col_codes = data.columns[name].astype(np.int64)
        # the first column's codes are the flat index as they are (0 * |domain| + code)
        codes = col_codes if codes is None else codes * size + col_codes
    if codes is None:
        codes = np.zeros(data.n_rows, dtype=np.int64)
    return codes
