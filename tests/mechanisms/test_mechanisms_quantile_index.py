"""The indexed quantile (all rows + a 0/1 filter) is the same mechanism as the quantile of the
matching rows, and its work does not depend on what the filter matches.

Equivalence is exact: the point and worst-case bounds draw from the same arrays (so the same
seed gives the same release), and the calibrated bounds' per-cell output probabilities equal
those of the pre-index implementation (tests/mechanisms/quantile_reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.random import RandomState

import mechanisms.quantile as quantile
from mechanisms import (
    InvalidDomain,
    histogram_codes,
    quantile_index,
    release_quantile,
    release_quantile_indexed,
)
from mechanisms.quantile import BOUND_CELLS, _indexed_bound_distribution, _piece_ranks, _ranks
from tests.mechanisms.quantile_reference import _bound_distribution as reference_distribution

LOWER, UPPER = 0.0, 10.0


def _dataset(g: np.random.Generator, n: int) -> np.ndarray:
    data = np.round(g.uniform(LOWER - 1, UPPER + 1, n), int(g.integers(0, 4)))
    data[g.random(n) < 0.1] = UPPER  # ties at a bound and clamped rows
    return data


def _cell_log_probs(log_weights: np.ndarray, first: np.ndarray, count: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """(piece starts, per-cell log probability of each piece, the anchor's log probability)."""
    total = np.logaddexp.reduce(log_weights)
    keep = count[:-1] > 0
    lw, fi, co = log_weights[:-1][keep], first[:-1][keep], count[:-1][keep]
    order = np.argsort(fi)
    return fi[order], (lw - np.log(co.astype(float)) - total)[order], log_weights[-1] - total


def _agree(a: tuple[np.ndarray, np.ndarray, float], b: tuple[np.ndarray, np.ndarray, float]
           ) -> None:
    starts = np.union1d(a[0], b[0])
    pa = a[1][np.searchsorted(a[0], starts, side="right") - 1]
    pb = b[1][np.searchsorted(b[0], starts, side="right") - 1]
    finite = np.isfinite(pa) | np.isfinite(pb)
    assert np.array_equal(np.isfinite(pa), np.isfinite(pb))
    np.testing.assert_allclose(pa[finite], pb[finite], rtol=0, atol=1e-9)
    assert a[2] == pytest.approx(b[2], abs=1e-9) or (a[2] == b[2] == -np.inf)
    # the pieces cover every cell exactly once
    assert a[0][0] == 0 and starts[-1] < BOUND_CELLS


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_calibrated_bound_distribution_equals_the_matched_rows_reference(side: str) -> None:
    g = np.random.default_rng(61)
    for _ in range(40):
        data = _dataset(g, int(g.integers(0, 300)))
        index = quantile_index(data, lower=LOWER, upper=UPPER)
        for share in (0.0, 0.05, 0.4, 1.0):
            mask = g.random(data.size) < share
            ranks = _ranks(index, mask)
            matched = np.sort(np.clip(data[mask], LOWER, UPPER))
            for q in (0.0, 0.1, 0.5, 0.9, 1.0):
                eps, rows = float(g.choice([0.05, 1.0, 6.0])), int(g.integers(1, 3))
                ours = _indexed_bound_distribution(index, ranks, LOWER, UPPER, q, eps, rows,
                                                   side, _piece_ranks(index, ranks))  # type: ignore[arg-type]
                theirs = reference_distribution(matched, LOWER, UPPER, q, eps, rows, side)
                _agree(_cell_log_probs(*ours), _cell_log_probs(*theirs))


@pytest.mark.parametrize("interval", ["worst_case", "none"])
def test_point_and_worst_case_bounds_equal_release_quantile_of_the_matches(interval: str) -> None:
    g = np.random.default_rng(62)
    for trial in range(60):
        data = _dataset(g, int(g.integers(0, 500)))
        mask = g.random(data.size) < g.random()
        index = quantile_index(data, lower=LOWER, upper=UPPER)
        for q in (0.0, 0.25, 0.5, 1.0):
            kw = {"q": q, "lower": LOWER, "upper": UPPER, "epsilon": 0.7, "interval": interval}
            ours = release_quantile_indexed(index, mask, random_state=RandomState(trial), **kw)
            theirs = release_quantile(data[mask], random_state=RandomState(trial), **kw)
            assert ours == theirs


def test_the_samplers_arrays_have_the_same_size_whatever_the_filter_matches(monkeypatch) -> None:
    """A work test: record the length of every array the exponential mechanism samples from
    (the only size-dependent step); it is fixed by n and the public parameters."""
    seen: list[int] = []
    real = quantile._exponential_index

    def spy(log_weights: np.ndarray, rng: object) -> int:
        seen.append(log_weights.size)
        return real(log_weights, rng)  # type: ignore[arg-type]

    monkeypatch.setattr(quantile, "_exponential_index", spy)
    g = np.random.default_rng(63)
    data = g.normal(5, 2, 5000)
    index = quantile_index(data, lower=LOWER, upper=UPPER)
    sizes = set()
    for share in (0.0, 0.001, 0.4, 0.6, 1.0):
        for values in (data, np.full(data.size, 3.0)):  # values do not matter either
            idx = quantile_index(values, lower=LOWER, upper=UPPER)
            mask = g.random(data.size) < share
            for interval in ("calibrated", "worst_case"):
                seen.clear()
                release_quantile_indexed(idx, mask, q=0.5, lower=LOWER, upper=UPPER, epsilon=1.0,
                                         interval=interval)  # type: ignore[arg-type]
                sizes.add((interval, tuple(seen)))
    # calibrated: point (4096 cells) + 2 bounds (2n + 1 pieces + anchor); worst case: 512 each
    assert sizes == {("calibrated", (quantile.POINT_CELLS, 2 * data.size + 2, 2 * data.size + 2)),
                     ("worst_case", (quantile.POINT_CELLS, 512, 512))}
    assert index.piece_first.size == 2 * data.size + 1


def test_bad_weights_and_other_bounds_are_refused() -> None:
    index = quantile_index(np.arange(10.0), lower=LOWER, upper=UPPER)
    kw = {"q": 0.5, "lower": LOWER, "upper": UPPER, "epsilon": 1.0}
    with pytest.raises(InvalidDomain, match="weights"):
        release_quantile_indexed(index, np.ones(9, dtype=bool), **kw)
    with pytest.raises(InvalidDomain, match="weights"):
        release_quantile_indexed(index, np.full(10, 0.5), **kw)
    with pytest.raises(InvalidDomain, match="other bounds"):
        release_quantile_indexed(index, None, **{**kw, "upper": 20.0})


def test_histogram_codes_bin_exactly_as_numpy_histogram() -> None:
    g = np.random.default_rng(64)
    for _ in range(200):
        low, high = sorted(g.uniform(-100, 100, 2))
        bins = int(g.integers(1, 50))
        x = np.concatenate([g.uniform(low - 5, high + 5, 300), np.linspace(low, high, bins + 1),
                            np.round(g.uniform(low, high, 50), 1)])
        expected, _ = np.histogram(np.clip(x, low, high), bins=bins, range=(low, high))
        codes = histogram_codes(x, lower=low, upper=high, bins=bins)
        assert np.array_equal(np.bincount(codes, minlength=bins), expected)
