"""One shape per aggregate × mechanism: an empty filter or an empty group answers with the same
status, fields and types as a non-empty one (a missing field would say "no rows matched").
A grouped answer's headline accuracy describes the whole table, never one group's interval."""

from __future__ import annotations

from typing import Any

import pytest

from tests.privacy.conftest import World, strict_body

MATCHES_SOME = [{"column": "smoker", "op": "==", "value": True}]
MATCHES_NONE = [{"column": "n", "op": ">", "value": 100}]  # n <= 100 by the public bounds

CASES: list[dict[str, Any]] = [
    {"aggregate": "count"},
    {"aggregate": "sum", "column": "x"},
    {"aggregate": "mean", "column": "x"},
    {"aggregate": "variance", "column": "x"},
    {"aggregate": "std", "column": "n"},
    {"aggregate": "histogram", "column": "x", "bins": 4},
    {"aggregate": "histogram", "column": "name"},
    {"aggregate": "quantile", "column": "x", "quantile": 0.5},
    {"aggregate": "quantile", "column": "n", "quantile": 0.9},
    {"aggregate": "count", "group_by": ["name"]},
    {"aggregate": "sum", "column": "x", "group_by": ["name"]},
    {"aggregate": "mean", "column": "x", "group_by": ["smoker"]},
    {"aggregate": "variance", "column": "n", "group_by": ["name"]},
    {"aggregate": "std", "column": "x", "group_by": ["name", "smoker"]},
    {"aggregate": "quantile", "column": "x", "quantile": 0.25, "group_by": ["name"]},
]
MECHANISMS = {"laplace": {}, "gaussian": {"mechanism": "gaussian", "delta": 1e-9}}


def shape(value: Any) -> Any:
    """The JSON structure with every leaf replaced by its type (lists keep their length)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def _answer(world: World, spec: dict[str, Any], where: list[dict[str, Any]],
            epsilon: float) -> tuple[int, Any]:
    resp = world.query(epsilon=epsilon, where=where, **spec)
    body = strict_body(resp)
    if resp.status_code == 200:
        body.pop("query_id")
    return resp.status_code, body


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("spec", CASES, ids=lambda s: "-".join(
    str(v) if not isinstance(v, list) else "+".join(v) for v in s.values()))
def test_empty_and_non_empty_answers_have_one_shape(
    worlds: tuple[World, World], spec: dict[str, Any], mechanism: str
) -> None:
    world = worlds[0]
    full = {**spec, **MECHANISMS[mechanism]}
    status_some, some = _answer(world, full, MATCHES_SOME, 0.5)
    status_none, none = _answer(world, full, MATCHES_NONE, 0.5)
    assert status_some == status_none
    assert shape(some) == shape(none)
    if status_some != 200:  # the quantile is pure ε-DP: refused alike, with the same error
        assert spec["aggregate"] == "quantile" and mechanism == "gaussian"
        assert some == none
        return
    cells = some["result"]
    # variance/std always carry the interval valid for every dataset; so does a quantile of a
    # float column (its ci95 is calibrated): by aggregate and column type, never by the data
    worst_case = spec["aggregate"] in ("variance", "std") or (
        spec["aggregate"] == "quantile" and spec["column"] == "x")
    if isinstance(cells, list):
        # Within one grouped answer too: empty groups (alice is in no smoker row, and "n > 100"
        # empties all) have the same fields and types as the others.
        assert len({str(shape(cell)) for cell in cells}) == 1
        # The headline is about the whole table: never one group's interval.
        assert set(some["accuracy"]) <= {"noise_scale", "grid"}
        assert all(("ci95_worst_case" in cell) == worst_case for cell in cells)
    else:
        assert "ci95" in some["accuracy"]
        assert ("ci95_worst_case" in some["accuracy"]) == worst_case
