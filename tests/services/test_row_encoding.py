"""The column-at-a-time upload encoder agrees with the row-by-row one on every input: the same
plaintext bytes when all rows are valid, and no answer (so the row path reports) otherwise."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest

from privacy_api.domain.errors import InvalidRequest
from privacy_api.services.uploads import RowErrors, encode_upload
from privacy_api.storage.dataset_schema import RowEncoder, RowError, parse_schema

COLUMNS = [
    {"name": "pid", "type": "id"},
    {"name": "age", "type": "int", "lower": 0, "upper": 100},
    {"name": "cost", "type": "float", "lower": 0, "upper": 1000},
    {"name": "sex", "type": "category", "categories": ["F", "M", "1", "true"]},
    {"name": "flag", "type": "bool"},
]
ENCODER = RowEncoder(parse_schema(COLUMNS, None))

# candidate values per column: valid ones first, then a mix of invalid and tricky ones
VALID: dict[str, list[Any]] = {
    "pid": ["p1", "x" * 200, 7, 0, "é"],
    "age": [3, -3, 2**53, -(2**53), 4.0, "12", " 7 ", "1_000"],
    "cost": [1.5, 0, -2, 1e300, "3.25", "1e3", " 4 ", 2**53],
    "sex": ["F", "M", "1", "true"],
    "flag": [True, False, "true", "0", " Yes ", "F", "t"],
}
INVALID: dict[str, list[Any]] = {
    "pid": ["", "x" * 201, True, 1.5, None, [], {}],
    "age": [2**53 + 1, -(2**53) - 1, 4.5, "4.5", "x", True, None, [], "", float("inf")],
    "cost": [float("nan"), float("inf"), "inf", "nan", "x", True, None, [], ""],
    "sex": ["f", 1, True, None, [], "", 1.0],
    "flag": [1, 0, 1.0, "2", None, [], "", "maybe"],
}


def _row(rnd: random.Random, bad: float) -> dict[str, Any]:
    return {name: rnd.choice(INVALID[name] if rnd.random() < bad else VALID[name])
            for name in VALID}


def _row_by_row(rows: list[Any]) -> list[bytes] | None:
    try:
        return [ENCODER.encode_mapping(r) for r in rows]
    except RowError:
        return None


@pytest.mark.parametrize("bad", [0.0, 0.002, 0.05, 0.5])
def test_mappings_agree_with_the_row_path(bad: float) -> None:
    rnd = random.Random(int(bad * 1000) + 1)
    for _ in range(300):
        rows = [_row(rnd, bad) for _ in range(rnd.randint(1, 40))]
        fast = ENCODER.encode_mappings(rows)
        slow = _row_by_row(rows)
        assert fast == slow or (fast is None and slow is not None)
        if bad == 0.0:  # all valid: the fast path answers
            assert fast is not None and fast == slow


@pytest.mark.parametrize("name", list(VALID))
def test_one_invalid_value_among_valid_ones_is_never_accepted(name: str) -> None:
    rnd = random.Random(name)
    for background in VALID[name]:  # a column of one kind of valid value, then mixed kinds
        for bad in INVALID[name]:
            for mixed in (False, True):
                rows = [_row(rnd, 0.0) for _ in range(20)]
                for r in rows:
                    r[name] = rnd.choice(VALID[name]) if mixed else background
                rows[rnd.randrange(20)][name] = bad
                assert _row_by_row(rows) is None
                assert ENCODER.encode_mappings(rows) is None, (name, background, bad)
                values = [[str(r[k]) for k in ("flag", "sex", "cost", "age", "pid")] for r in rows]
                try:
                    slow: list[bytes] | None = [ENCODER.encode_values(v, [4, 3, 2, 1, 0])
                                                for v in values]
                except RowError:
                    slow = None
                assert ENCODER.encode_value_rows(values, [4, 3, 2, 1, 0]) in (slow, None)


def test_mappings_with_wrong_shapes_defer_to_the_row_path() -> None:
    good = {"pid": "a", "age": 1, "cost": 1.0, "sex": "F", "flag": True}
    for bad in ([1, 2], "x", None, {**good, "extra": 1}, {k: v for k, v in good.items() if k != "age"}):
        assert ENCODER.encode_mappings([good, bad]) is None
    assert ENCODER.encode_mappings([good]) == [ENCODER.encode_mapping(good)]


def test_bool_columns_do_not_confuse_1_with_true() -> None:
    rows = [{"pid": "a", "age": 1, "cost": 1.0, "sex": "F", "flag": v} for v in (True, 1)]
    assert ENCODER.encode_mappings(rows) is None
    with pytest.raises(RowError):
        ENCODER.encode_mapping(rows[1])


def _csv(rows: list[list[str]]) -> bytes:
    import csv

    buf = io.StringIO()
    csv.writer(buf).writerows([["flag", "sex", "cost", "age", "pid"], *rows])
    return buf.getvalue().encode()


def test_csv_agrees_with_the_row_path() -> None:
    rnd = random.Random(5)
    as_text = {name: [v for v in VALID[name] + INVALID[name] if isinstance(v, str | int | float)
                      and not isinstance(v, bool)] for name in VALID}
    for bad in (0.0, 0.01, 0.3):
        for _ in range(100):
            rows = []
            for _ in range(rnd.randint(1, 30)):
                pick = {n: str(rnd.choice(as_text[n] if rnd.random() < bad else
                                          [v for v in VALID[n] if not isinstance(v, bool)]))
                        for n in VALID}
                rows.append([pick["flag"], pick["sex"], pick["cost"], pick["age"], pick["pid"]])
            body = _csv(rows)
            order = [4, 3, 2, 1, 0]
            try:
                slow: list[bytes] | None = [ENCODER.encode_values(r, order) for r in rows]
            except RowError:
                slow = None
            try:
                got: list[bytes] | None = encode_upload(ENCODER, "text/csv", io.BytesIO(body))
            except InvalidRequest:
                got = None
            assert got == slow
            fast = ENCODER.encode_value_rows(rows, order)
            assert fast == slow or (fast is None and slow is not None)


def test_csv_errors_name_the_rows_across_chunks() -> None:
    from privacy_api.services.uploads import iter_encoded

    rows = [["true", "F", "1.5", "3", f"p{i}"] for i in range(50)]
    rows[7][3] = "x"
    rows[33] = ["true", "F"]
    body = _csv(rows[:20]) + b"\r\n" + _csv(rows[20:]).split(b"\r\n", 1)[1]  # a blank line at 20
    errors = RowErrors()
    out = [p for chunk in iter_encoded(ENCODER, "text/csv", io.BytesIO(body), errors, chunk_rows=8)
           for p in chunk]
    assert len(out) == 48
    assert [e["row"] for e in errors.errors] == [7, 34]
