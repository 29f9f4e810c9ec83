"""Synthetic exploration rows drawn from a dataset's public schema alone.

Nothing here reads a record: the rows depend only on the schema (types, bounds, category
domains, the privacy-unit column and its max_rows), the number of rows and the seed, so they
reveal nothing about the data and cost no budget. Analysts develop queries on them before
spending budget on the real data. The same (schema, rows, seed) always gives the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..storage.columns import DatasetColumns, _bound_contributions
from ..storage.dataset_schema import Column, DatasetSchema, unit_hashes

MAX_DUMMY_ROWS = 10_000
DEFAULT_DUMMY_ROWS = 1_000
DEFAULT_DUMMY_SEED = 0
MAX_DUMMY_SEED = 2**63 - 1


def _unit_labels(n: int, max_rows: int, rng: np.random.Generator) -> list[str]:
    """"dummy-unit-K" labels, each unit on 1..max_rows consecutive rows (uniform)."""
    sizes = rng.integers(1, max_rows, size=n, endpoint=True)  # n units always cover n rows
    owner = np.repeat(np.arange(n), sizes)[:n]
    return [f"dummy-unit-{k}" for k in owner.tolist()]


def _draw(col: Column, schema: DatasetSchema, n: int, rng: np.random.Generator) -> np.ndarray | list[str]:
    """One column's values in their stored form (category: index into the domain)."""
    if col.type == "float":
        assert col.lower is not None and col.upper is not None
        return rng.uniform(col.lower, col.upper, size=n)
    if col.type == "int":
        assert col.lower is not None and col.upper is not None
        return rng.integers(int(col.lower), int(col.upper), size=n, endpoint=True, dtype=np.int64)
    if col.type == "category":
        return rng.integers(0, len(col.categories), size=n, dtype=np.int32)
    if col.type == "bool":
        return rng.integers(0, 2, size=n).astype(np.bool_)
    if col.name == schema.privacy_unit_column:
        return _unit_labels(n, schema.privacy_unit_max_rows, rng)
    return [f"dummy-id-{i}" for i in range(n)]


def draw_values(schema: DatasetSchema, rows: int, seed: int) -> dict[str, np.ndarray | list[str]]:
    """Every column's values, in schema order, from one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return {col.name: _draw(col, schema, rows, rng) for col in schema.columns}


def dummy_records(schema: DatasetSchema, rows: int, seed: int) -> list[dict[str, Any]]:
    """The rows as an upload would send them (category names, booleans, id strings)."""
    values = draw_values(schema, rows, seed)
    columns: list[list[Any]] = []
    for col in schema.columns:
        v = values[col.name]
        if col.type == "category":
            assert isinstance(v, np.ndarray)
            columns.append([col.categories[i] for i in v.tolist()])
        else:
            columns.append(v.tolist() if isinstance(v, np.ndarray) else v)
    return [dict(zip(schema.names, row, strict=True)) for row in zip(*columns, strict=True)]


def dummy_columns(dataset_id: int, schema: DatasetSchema, rows: int, seed: int) -> DatasetColumns:
    """The rows as the query engine reads a dataset version, contribution bounding included
    (an int or category unit column can repeat a unit beyond max_rows, as real data can)."""
    values = draw_values(schema, rows, seed)
    columns = {name: (unit_hashes(v) if isinstance(v, list) else v) for name, v in values.items()}
    # version -1: never a real version, so nothing keyed by version can mistake it for one
    entry = DatasetColumns(dataset_id, -1, schema, columns, rows)
    _bound_contributions(entry)
    entry.nbytes = sum(a.nbytes for a in entry.columns.values())
    return entry
