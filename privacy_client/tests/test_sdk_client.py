"""The analyst and data-owner SDK against a served app, over real HTTP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sdk_support import PATIENTS_SCHEMA, patient_rows

from privacy_client import BudgetExhausted, Client, InvalidRequest, NotFound, Unauthorized, UploadFailed


@pytest.fixture
def env(served):
    _, owner = served.user("owner")
    aid, analyst = served.user("analyst")
    owner_client = Client(served.url, owner)
    ds = owner_client.create_dataset(PATIENTS_SCHEMA["name"], PATIENTS_SCHEMA["columns"],
                                     privacy_unit=PATIENTS_SCHEMA["privacy_unit"])["id"]
    served.grant(aid, ds, 1.0)
    with Client(served.url, analyst) as analyst_client:
        yield {"owner": owner_client, "analyst": analyst_client, "ds": ds, "url": served.url,
               "admin_key": served.admin_key}
    owner_client.close()


def test_query_estimate_budgets_and_typed_errors(env):
    c, ds = env["analyst"], env["ds"]
    env["owner"].upload_records(ds, patient_rows(50), progress=False)
    est = c.estimate(ds, aggregate="count", epsilon=0.4)
    assert est["epsilon"] == 0.4
    res = c.query(ds, aggregate="count", epsilon=0.4)
    assert isinstance(res["result"], int) and not res["replayed"]
    assert c.query(ds, aggregate="count", epsilon=0.4)["replayed"]
    assert c.budgets()[0]["epsilon_spent"] == pytest.approx(0.4)
    assert len(c.queries(dataset_id=ds)) == 2
    with pytest.raises(BudgetExhausted) as exc:
        c.query(ds, aggregate="sum", column="cost", epsilon=0.7)
    assert exc.value.status == 403 and exc.value.code == "budget_exhausted"
    with pytest.raises(InvalidRequest) as bad:
        c.query(ds, aggregate="mean", epsilon=0.1)
    assert bad.value.status == 422 and "column" in bad.value.details
    with pytest.raises(NotFound):
        c.query(ds + 99, aggregate="count", epsilon=0.1)
    with pytest.raises(Unauthorized), Client(env["url"], "pa_bad_key") as nobody:
        nobody.me()


def test_upload_files_in_batches(env, tmp_path: Path):
    owner, ds = env["owner"], env["ds"]
    rows = patient_rows(250)
    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:100])
    nd_path = tmp_path / "rows.ndjson"
    nd_path.write_text("".join(json.dumps(r) + "\n" for r in rows[100:200]))
    js_path = tmp_path / "rows.json"
    js_path.write_text(json.dumps(rows[200:]))
    assert owner.upload_records(ds, csv_path, batch_size=30, progress=False)["inserted"] == 100
    assert owner.upload_records(ds, nd_path, batch_size=40, progress=True)["inserted"] == 100
    out = owner.upload_records(ds, js_path, batch_size=1000, progress=False)
    assert out["inserted"] == 50
    meta = owner.dataset(ds)
    assert meta["rows"] == 250 and meta["version"] == out["version"] == 4 + 3 + 1


def test_upload_resumes_after_a_failed_batch(env, tmp_path: Path):
    owner, ds = env["owner"], env["ds"]
    rows = patient_rows(100)
    rows[65]["age"] = "not a number"  # batch 3 of 4 (rows 60..89) fails
    with pytest.raises(UploadFailed) as exc:
        owner.upload_records(ds, rows, batch_size=30, progress=False)
    assert exc.value.rows_done == 60 and exc.value.status == 422
    assert owner.dataset(ds)["rows"] == 60
    rows[65]["age"] = 65
    out = owner.upload_records(ds, rows, batch_size=30, progress=False,
                               resume_from=exc.value.rows_done)
    assert out["inserted"] == 40
    assert owner.dataset(ds)["rows"] == 100


def test_budgets_carry_renewal_and_lifetime_and_the_ledger_exports(env):
    from privacy_client import Forbidden

    c, ds = env["analyst"], env["ds"]
    env["owner"].upload_records(ds, patient_rows(50), progress=False)
    with Client(env["url"], env["admin_key"]) as admin:
        aid = c.me()["id"]
        b = admin.set_budget(aid, ds, epsilon=1.0, renewal_period="monthly",
                             lifetime_epsilon_cap=3)
        assert b["renewal_period"] == "monthly" and b["lifetime_epsilon_cap"] == 3.0
        c.query(ds, aggregate="count", epsilon=0.25)
        [mine] = c.budgets()
        assert mine["epsilon_spent"] == mine["lifetime_epsilon_spent"] == pytest.approx(0.25)
        assert mine["period_ends_at"] and mine["ledger_entries"] == 1
        assert len(mine["ledger_head"]) == 64
        lines = list(admin.export_ledger())
        entries = [x for x in lines if x["type"] == "entry"]
        # the chain's newest entry is the head the budget row anchors (the server's own
        # verifier, `privacy-api verify-ledger --export`, recomputes every hash: tests/ledger)
        assert mine["ledger_head"] in {x["hash"] for x in entries}
    with pytest.raises(Forbidden):
        list(c.export_ledger())
