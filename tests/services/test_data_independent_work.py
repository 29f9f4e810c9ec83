"""Over the real API: the work of every aggregate is fixed by the version's size and the public
parameters, not by how many rows match (a work test, not a timing test).

Instrumented: the length of every array the exponential mechanism samples from, the arrays the
histogram counts are taken over, the weights handed to the quantile, and the per-version
artefacts built. Each must be the same for filters matching 0%, ~40%, ~60% and 100% of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mechanisms.quantile as quantile
from privacy_api.services import release
from tests.helpers import Api, patient_rows

N = 1200

FILTERS = {  # age is row % 90: these match 0, ~40%, ~60% and all rows
    "none": [{"column": "age", "op": ">", "value": 100}],
    "40%": [{"column": "age", "op": "<", "value": 36}],
    "60%": [{"column": "age", "op": "<", "value": 54}],
    "all": [{"column": "age", "op": ">=", "value": 0}],
}

QUERIES: dict[str, dict[str, Any]] = {
    "quantile": {"aggregate": "quantile", "column": "cost", "quantile": 0.5},
    "quantile int": {"aggregate": "quantile", "column": "age", "quantile": 0.9},
    "grouped quantile": {"aggregate": "quantile", "column": "cost", "quantile": 0.5,
                         "group_by": ["sex"]},
    "histogram": {"aggregate": "histogram", "column": "cost", "bins": 7},
    "category histogram": {"aggregate": "histogram", "column": "sex"},
    "count": {"aggregate": "count"},
    "sum": {"aggregate": "sum", "column": "cost"},
    "mean": {"aggregate": "mean", "column": "cost"},
    "variance": {"aggregate": "variance", "column": "cost"},
    "grouped mean": {"aggregate": "mean", "column": "cost", "group_by": ["smoker"]},
}


@pytest.fixture
def env(app: Any) -> tuple[Api, str, int]:
    api = Api(app)
    _, admin = api.user("root", "admin")
    _, owner = api.user("own", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(N))
    assert api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 1e5}).status_code == 200
    return api, analyst, ds


def _shape(a: Any) -> Any:
    return None if a is None else tuple(np.shape(a))


def test_every_aggregate_does_the_same_work_whatever_the_filter_matches(env, monkeypatch):
    api, analyst, ds = env
    log: list[tuple[str, Any]] = []
    real_sample, real_bincount = quantile._exponential_index, release._masked_bincount
    real_indexed = release.mech.release_quantile_indexed
    real_moments = release._moments

    def sample(log_weights: np.ndarray, rng: Any) -> int:
        log.append(("sample", log_weights.size))
        return real_sample(log_weights, rng)

    def bincount(codes: np.ndarray, mask: Any, bins: int) -> np.ndarray:
        log.append(("bincount", (codes.shape, _shape(mask), bins)))
        return real_bincount(codes, mask, bins)

    def indexed(index: Any, weights: Any, **kw: Any) -> Any:
        log.append(("quantile", (index.values.size, _shape(weights))))
        return real_indexed(index, weights, **kw)

    def moments(data: Any, aggregate: str, column: str, lower: float, upper: float,
                mask: Any) -> Any:
        log.append(("moments", _shape(mask)))
        return real_moments(data, aggregate, column, lower, upper, mask)

    monkeypatch.setattr(quantile, "_exponential_index", sample)
    monkeypatch.setattr(release, "_masked_bincount", bincount)
    monkeypatch.setattr(release.mech, "release_quantile_indexed", indexed)
    monkeypatch.setattr(release, "_moments", moments)

    cache = api.app.extensions["privacy_api"].cache
    for name, query in QUERIES.items():
        work: dict[str, list[tuple[str, Any]]] = {}
        for i, (label, where) in enumerate(FILTERS.items()):
            log.clear()
            spec = {**query, "where": where, "epsilon": 0.5 + i / 100}  # no replays
            resp = api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec)
            assert resp.status_code == 200, (name, resp.get_json())
            entry = cache.peek(ds, 1)
            assert entry is not None
            derived = sorted(str(k) for k in entry.derived)
            work[label] = [*log, ("derived", derived)]
        first = work["none"]
        assert all(w == first for w in work.values()), (name, work)
        if "quantile" in name:
            assert any(kind == "sample" for kind, _ in first)
        if "histogram" in name:
            assert [x for x in first if x[0] == "bincount"][0][1][0] == (N,)


def test_the_quantile_sees_every_row_of_the_version(env, monkeypatch):
    api, analyst, ds = env
    sizes: list[int] = []
    real = release.mech.release_quantile_indexed

    def indexed(index: Any, weights: Any, **kw: Any) -> Any:
        sizes.append(index.values.size)
        assert weights is None or np.shape(weights) == (index.values.size,)
        return real(index, weights, **kw)

    monkeypatch.setattr(release.mech, "release_quantile_indexed", indexed)
    spec = {"aggregate": "quantile", "column": "cost", "quantile": 0.5, "epsilon": 1,
            "where": [{"column": "age", "op": "==", "value": 7}], "group_by": ["sex"]}
    assert api.as_(analyst).post(f"/v1/datasets/{ds}/query", json=spec).status_code == 200
    assert sum(sizes) == N  # each group's index covers all its rows, matched or not
