"""The service's cached, masked moment reductions equal the mechanisms' definition."""

from __future__ import annotations

import numpy as np
import pytest

from mechanisms.moments import grouped_moment_stats, moment_stats
from privacy_api.columns import DatasetColumns
from privacy_api.dataset_schema import parse_schema
from privacy_api.services.release import _grouped_moments, _moments

SCHEMA = parse_schema([{"name": "x", "type": "float", "lower": -5, "upper": 20},
                       {"name": "g", "type": "category", "categories": ["a", "b", "c"]}], None)


@pytest.mark.parametrize("masked", [False, True])
def test_moments_match_mechanisms(masked: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5, 10, 10_000)  # many rows outside the bounds: clamping matters
    g = rng.integers(0, 3, 10_000).astype(np.int32)
    data = DatasetColumns(1, 1, SCHEMA, {"x": x, "g": g}, x.size)
    mask = (x > 0) if masked else None
    rows = x if mask is None else x[mask]
    ours = _moments(data, "x", -5.0, 20.0, mask)
    ref = moment_stats(rows, -5.0, 20.0)
    assert ours.count == ref.count
    assert ours.shifted_sum == pytest.approx(ref.shifted_sum, rel=1e-9)
    assert ours.shifted_squares == pytest.approx(ref.shifted_squares, rel=1e-9)
    codes = g.astype(np.int64) if mask is None else g[mask].astype(np.int64)
    grouped = _grouped_moments(data, "x", -5.0, 20.0, codes, 3, mask)
    for a, b in zip(grouped, grouped_moment_stats(rows, codes, 3, -5.0, 20.0), strict=True):
        assert a.count == b.count
        assert a.shifted_sum == pytest.approx(b.shifted_sum, rel=1e-9)
        assert a.shifted_squares == pytest.approx(b.shifted_squares, rel=1e-9)
