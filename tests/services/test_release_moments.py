"""The service's cached, masked reductions equal the mechanisms' definitions."""

from __future__ import annotations

import numpy as np
import pytest

from mechanisms.moments import grouped_moment_stats, moment_stats
from privacy_api.services import moment_sums
from privacy_api.services.release import _GroupedRows, _moments
from privacy_api.storage.columns import DatasetColumns
from privacy_api.storage.dataset_schema import parse_schema

# h has 100 categories, so g x h has 300 groups: the reduceat path (> 64 groups), with empty
# groups wherever the data below never uses a category.
SCHEMA = parse_schema([{"name": "x", "type": "float", "lower": -5, "upper": 20},
                       {"name": "g", "type": "category", "categories": ["a", "b", "c"]},
                       {"name": "h", "type": "category",
                        "categories": [f"h{i}" for i in range(100)]}], None)


def _data(seed: int) -> DatasetColumns:
    rng = np.random.default_rng(seed)
    x = rng.normal(5, 10, 10_000)  # many rows outside the bounds: clamping matters
    g = rng.choice([0, 2], 10_000).astype(np.int32)  # category "b" is empty
    h = rng.integers(0, 60, 10_000).astype(np.int32)  # h60..h99 are empty
    return DatasetColumns(1, 1, SCHEMA, {"x": x, "g": g, "h": h}, x.size)


READS = {"sum": ("total",), "mean": ("shifted",), "variance": ("shifted", "squares"),
         "std": ("shifted", "squares")}


@pytest.mark.parametrize("chunk", [1 << 17, 999])
@pytest.mark.parametrize("masked", [False, True])
def test_moments_match_mechanisms(masked: bool, chunk: int,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # one pass over the 10,000 rows, or many (the last one short): the same exact sums
    monkeypatch.setattr(moment_sums, "CHUNK", chunk)
    data = _data(3)
    x = data.columns["x"]
    mask = (x > 0) if masked else None
    rows = x if mask is None else x[mask]
    ref = moment_stats(rows, -5.0, 20.0)
    for aggregate, fields in READS.items():
        ours = _moments(data, aggregate, "x", -5.0, 20.0, mask)
        assert ours.count == ref.count
        for field in fields:  # exact integer sums of grid units, not approximately equal
            assert getattr(ours, field) == getattr(ref, field)
            assert isinstance(getattr(ours, field), int)


@pytest.mark.parametrize("group_by", [("g",), ("g", "h")])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1 << 17, 999])
def test_grouped_rows_match_mechanisms(group_by: tuple[str, ...], masked: bool, chunk: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moment_sums, "CHUNK", chunk)
    data = _data(4)
    x = data.columns["x"]
    codes = data.columns["g"].astype(np.int64)
    n_groups = 3
    if group_by == ("g", "h"):
        codes, n_groups = codes * 100 + data.columns["h"], 300
    mask = (x > 0) if masked else None
    rows, row_codes = (x, codes) if mask is None else (x[mask], codes[mask])
    # twice: the second call answers from the per-version memo
    for _ in range(2):
        grouped = _GroupedRows(data, group_by, n_groups, mask)
        counts = np.bincount(row_codes, minlength=n_groups)
        np.testing.assert_array_equal(grouped.counts(), counts)
        ours = grouped.moments("x", -5.0, 20.0)
        ref = grouped_moment_stats(rows, row_codes, n_groups, -5.0, 20.0)
        for a, b in zip(ours, ref, strict=True):
            assert a == b  # exact integer sums
        for aggregate, fields in READS.items():  # each aggregate's sums, the others left 0
            for a, b in zip(grouped.moments("x", -5.0, 20.0, aggregate), ref, strict=True):
                assert a.count == b.count
                for field in ("total", "shifted", "squares"):
                    assert getattr(a, field) == (getattr(b, field) if field in fields else 0)
        for i, (index, weights) in enumerate(grouped.quantile_indexes("x", -5.0, 20.0)):
            # each group's index holds all its rows (sorted, clamped); the weights pick the
            # matching ones
            np.testing.assert_array_equal(index.values, np.sort(np.clip(x[codes == i], -5, 20)))
            picked = index.values if weights is None else index.values[weights[index.order]]
            np.testing.assert_array_equal(picked, np.sort(np.clip(rows[row_codes == i], -5, 20)))
