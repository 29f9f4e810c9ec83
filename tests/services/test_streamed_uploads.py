"""The streamed JSON-array parse refuses what the whole-body parse refused, and more.

Every refusal stores nothing (the dataset keeps its rows and version) and the process answers
the next request.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, patient_rows

GOOD = b'{"patient_id": "q1", "age": 3, "sex": "F", "cost": 1.5, "smoker": false}'


@pytest.fixture
def upload(api: Api) -> Any:
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner, rows=patient_rows(3))

    def post(body: bytes, ctype: str = "application/json") -> tuple[int, dict[str, Any]]:
        resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=body, content_type=ctype)
        info = api.as_(owner).get(f"/v1/datasets/{ds}").get_json()
        if resp.status_code != 201:
            assert (info["rows"], info["version"]) == (3, 1), "a refused upload stored something"
        return resp.status_code, resp.get_json()

    return post


@pytest.mark.parametrize("body,status,fragment", [
    (b"", 400, "malformed JSON"),
    (b'{"patient_id": "q1"}', 422, "JSON array"),
    (b"[" + GOOD + b"] trailing", 400, "malformed JSON"),
    (b"[" + GOOD + b"] [" + GOOD + b"]", 400, "malformed JSON"),
    (b"[" + GOOD + b",", 400, "malformed JSON"),
    (b'[{"patient_id": NaN}]', 400, "malformed JSON"),
    (b'[{"patient_id": "\xff"}]', 400, "malformed JSON"),
])
def test_malformed_or_misshapen_bodies_are_refused(upload: Any, body: bytes, status: int,
                                                   fragment: str) -> None:
    code, err = upload(body)
    assert code == status, err
    assert fragment in err["message"]
    assert "\n" not in err["message"]  # ijson's excerpt of the input is not echoed


def test_rows_that_are_not_flat_objects_are_listed_by_index(upload: Any) -> None:
    rows = [
        GOOD,
        b"[1, 2, 3]",
        b"17",
        b'{"patient_id": "q2", "age": [3], "sex": "F", "cost": 1.5, "smoker": false}',
        b'{"patient_id": "q3", "age": 3, "age": 4, "sex": "F", "cost": 1.5, "smoker": false}',
        b'{"patient_id": {"deep": [[[1]]]}, "age": 3, "sex": "F", "cost": 1.5, "smoker": false}',
        GOOD.replace(b"q1", b"q4"),
    ]
    code, err = upload(b"[" + b",".join(rows) + b"]")
    assert code == 422, err
    bad = {e["row"]: e["error"] for e in err["details"]["rows"]}
    assert set(bad) == {1, 2, 3, 4, 5}
    assert "object" in bad[1] and "object" in bad[2]
    assert bad[3].startswith("age:") and "appears twice" in bad[4]


def test_deep_nesting_costs_nothing_much(upload: Any) -> None:
    # 2 MB of brackets in one element: `ijson.items` needs gigabytes for this (a path string
    # per level); the event stream needs a counter
    depth = 1_000_000
    code, err = upload(b"[" + b"[" * depth + b"]" * depth + b"]")
    assert code == 422 and err["details"]["rows"][0]["row"] == 0
    code, err = upload(b"[" + GOOD + b"]")
    assert code == 201 and err["inserted"] == 1


def test_ndjson_lines_longer_than_the_cap_are_refused(upload: Any) -> None:
    code, err = upload(b'{"patient_id": "' + b"x" * (1024 * 1024 + 10) + b'"}\n',
                       "application/x-ndjson")
    assert code == 400 and "longer than" in err["message"]


def test_csv_with_invalid_utf8_midway_is_refused(upload: Any) -> None:
    body = (b"patient_id,age,sex,cost,smoker\n" + b"a,1,F,1.0,true\n" * 20_000
            + b"b\xff,1,F,1.0,true\n")
    code, err = upload(body, "text/csv")
    assert code == 400 and "malformed CSV" in err["message"]
