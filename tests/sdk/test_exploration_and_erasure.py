"""The SDK's dummy exploration and erasure calls against the real app (WSGITransport)."""

from __future__ import annotations

import httpx
import pytest

from privacy_client import BudgetExhausted, Client
from tests.helpers import PATIENTS_SCHEMA, patient_rows


@pytest.fixture
def env(api):
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    transport = httpx.WSGITransport(app=api.app)
    owner_client = Client("http://testserver", owner, transport=transport)
    ds = owner_client.create_dataset(PATIENTS_SCHEMA["name"], PATIENTS_SCHEMA["columns"],
                                     privacy_unit=PATIENTS_SCHEMA["privacy_unit"])["id"]
    owner_client.upload_records(ds, patient_rows(30), progress=False)
    api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 0.1})
    with Client("http://testserver", analyst, transport=transport) as analyst_client:
        yield {"owner": owner_client, "analyst": analyst_client, "ds": ds}
    owner_client.close()


def test_dummy_rows_frames_and_free_queries(env):
    c, ds = env["analyst"], env["ds"]
    rows = c.dummy(ds, rows=50, seed=3)
    assert len(rows) == 50 and rows == c.dummy(ds, rows=50, seed=3)
    assert all(r["sex"] in ("F", "M") and 0 <= r["age"] <= 100 for r in rows)
    df = c.dummy(ds, rows=20, seed=3, as_frame=True)
    assert list(df.columns) == [col["name"] for col in PATIENTS_SCHEMA["columns"]]
    assert df.attrs["dummy"] is True and len(df) == 20
    assert df.to_dict("records") == c.dummy(ds, rows=20, seed=3)
    # ε far above the budget: free on dummy data, refused on the real data
    out = c.query(ds, aggregate="count", epsilon=5, dummy=True, dummy_rows=400)
    assert out["dummy"] is True and out["epsilon_spent"] == 0 and abs(out["result"] - 400) <= 15
    frame = c.sql(ds, "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex", epsilon=5,
                  dummy=True, dummy_seed=9)
    assert frame.attrs["dummy"] is True and frame.attrs["epsilon_spent"] == 0
    assert list(frame["sex"]) == ["F", "M"]
    with pytest.raises(BudgetExhausted):
        c.sql(ds, "SELECT COUNT(*) AS n FROM patients", epsilon=5)
    assert c.queries(dataset_id=ds) == [] and c.budgets()[0]["epsilon_spent"] == 0


def test_owner_erases_a_unit_through_the_sdk(env):
    owner, ds = env["owner"], env["ds"]
    assert owner.erase_unit(ds, "p4")["deleted"] == 1
    assert owner.erase_unit(ds, "p4")["deleted"] == 0
    assert owner.dataset(ds)["rows"] == 29
    plain = owner.create_dataset("plain", [{"name": "v", "type": "int", "lower": 0, "upper": 9}])
    out = owner.upload_records(plain["id"], [{"v": i} for i in range(5)], batch_size=2,
                               progress=False)
    ids = [i for lo, hi in out["record_ids"] for i in range(lo, hi + 1)]
    assert out["inserted"] == 5 and len(ids) == 5 and len(out["record_ids"]) >= 3
    erased = owner.erase_record(plain["id"], ids[2])
    assert erased["deleted"] == 1 and erased["version"] == 4
    assert owner.erase_record(plain["id"], ids[2])["deleted"] == 0
    assert owner.dataset(plain["id"])["rows"] == 4
