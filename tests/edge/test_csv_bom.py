"""A CSV upload starting with a UTF-8 BOM (every Excel export) is accepted, the BOM stripped."""

from __future__ import annotations

import csv
import io

from tests.helpers import Api, patient_rows


def _csv(rows: list[dict[str, object]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_csv_with_a_bom_uploads_like_one_without(api: Api) -> None:
    _, owner = api.user("o", "owner")
    o = api.as_(owner)
    rows = patient_rows(25)
    plain, bom = api.dataset(owner), api.dataset(owner)
    up = o.post(f"/v1/datasets/{bom}/records", data=b"\xef\xbb\xbf" + _csv(rows),
                content_type="text/csv; charset=utf-8")
    assert up.status_code == 201, up.get_json()
    assert up.get_json()["inserted"] == 25
    assert o.post(f"/v1/datasets/{plain}/records", data=_csv(rows),
                  content_type="text/csv").status_code == 201
    a, b = o.get(f"/v1/datasets/{bom}").get_json(), o.get(f"/v1/datasets/{plain}").get_json()
    assert a["rows"] == b["rows"] == 25


def test_only_a_leading_bom_is_stripped(api: Api) -> None:
    _, owner = api.user("o", "owner")
    ds = api.dataset(owner)
    # A BOM inside a value is data, not a marker: a bad category, refused and nothing written.
    rows = patient_rows(3)
    body = _csv(rows).replace(b"\r\np1,", b"\r\n\xef\xbb\xbfp1,").replace(b",M,", b",\xef\xbb\xbfM,")
    resp = api.as_(owner).post(f"/v1/datasets/{ds}/records", data=b"\xef\xbb\xbf" + body,
                               content_type="text/csv")
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["details"]["invalid_rows"] == 1
    assert api.as_(owner).get(f"/v1/datasets/{ds}").get_json()["rows"] == 0
