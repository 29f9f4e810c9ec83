"""The SQL endpoints over HTTP: the contract's shape, one atomic charge per statement split
across its aggregates, replay across SQL and JSON forms, refusals that charge nothing, and
the statement text kept encrypted with the ledger entry."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from privacy_api.services.datasets import data_cipher
from privacy_api.storage.models import Budget, LedgerEntry
from tests.helpers import patient_rows
from tests.sql.test_sql_statements import REFUSED


@pytest.fixture
def setup(api):
    _, admin = api.user("root", "admin")
    _, owner = api.user("o", "owner")
    aid, analyst = api.user("ana", "analyst")
    ds = api.dataset(owner, rows=patient_rows(400))
    resp = api.as_(admin).put(f"/v1/budgets/{aid}/{ds}", json={"epsilon": 3, "delta": 1e-5})
    assert resp.status_code == 200
    return {"api": api, "admin": api.as_(admin), "analyst": api.as_(analyst), "aid": aid, "ds": ds}


def sql(s, text, **body):
    return s["analyst"].post(f"/v1/datasets/{s['ds']}/sql", json={"sql": text, **body})


def ledger_state(s):
    st = s["api"].app.extensions["privacy_api"]
    with st.db.transaction() as session:
        entries = session.scalar(select(func.count()).select_from(LedgerEntry))
        charged = session.scalar(select(func.coalesce(func.sum(LedgerEntry.epsilon_charged), 0)))
        spent = session.scalar(select(Budget.epsilon_spent))
    return entries, charged, spent


EXAMPLE = ("SELECT sex, COUNT(*) AS n, AVG(cost) AS mean_cost FROM patients WHERE age >= 65 "
           "GROUP BY sex")


def test_contract_shape_of_a_grouped_multi_aggregate_statement(setup):
    resp = sql(setup, EXAMPLE, epsilon=0.5)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert set(body) == {"query_id", "columns", "rows", "ci95", "aggregates", "epsilon_spent",
                         "delta_spent", "replayed", "budget"}
    assert body["columns"] == ["sex", "n", "mean_cost"]
    # every public group appears, in the domain's order
    assert [r[0] for r in body["rows"]] == ["F", "M"]
    for row, ci in zip(body["rows"], body["ci95"], strict=True):
        assert ci[0] is None
        assert isinstance(row[1], int)  # counts are integers
        assert ci[1][0] <= row[1] <= ci[1][1] and ci[2][0] <= row[2] <= ci[2][1]
    assert [a["column"] for a in body["aggregates"]] == ["n", "mean_cost"]
    assert [a["aggregate"] for a in body["aggregates"]] == ["count", "mean"]
    assert [a["epsilon"] for a in body["aggregates"]] == [0.25, 0.25]
    # grouped: the intervals are per group (body["ci95"]); the aggregate's accuracy describes
    # the whole column (largest standard error, the grid), never one group's interval
    assert all(a["noise_scale"] > 0 and "ci95" not in a["accuracy"] and "grid" in a["accuracy"]
               for a in body["aggregates"])
    assert body["epsilon_spent"] == 0.5 and body["replayed"] is False
    assert body["budget"]["epsilon_remaining"] == pytest.approx(2.5)


def test_multi_aggregate_charge_is_one_entry_equal_to_the_sum_of_its_shares(setup):
    body = sql(setup, "SELECT COUNT(*) AS n, SUM(cost) AS s, MEDIAN(age) AS m FROM patients",
               epsilon=0.1).get_json()
    shares = [a["epsilon"] for a in body["aggregates"]]
    # 0.1 in 1e-12 quanta does not split in three: the shares still add up exactly
    assert shares == [0.033333333334, 0.033333333333, 0.033333333333]
    entries, charged, spent = ledger_state(setup)
    assert entries == 1
    assert charged == spent == 10**11 == sum(round(x * 10**12) for x in shares)
    assert body["epsilon_spent"] == 0.1


def test_custom_shares(setup):
    body = sql(setup, "SELECT COUNT(*) AS n, AVG(cost) AS m FROM patients", epsilon=1,
               shares={"n": 1, "m": 3}).get_json()
    assert [a["epsilon"] for a in body["aggregates"]] == [0.25, 0.75]
    bad = sql(setup, "SELECT COUNT(*) AS n, AVG(cost) AS m FROM patients", epsilon=1,
              shares={"n": 1, "x": 3})
    assert bad.status_code == 422
    assert bad.get_json()["details"]["shares"] == {"unknown": ["x"], "missing": ["m"],
                                                   "out_of_range": []}
    for weights in ({"n": 0, "m": 1}, {"n": -1, "m": 1}, {"n": "1e999999", "m": 1}):
        bad = sql(setup, "SELECT COUNT(*) AS n, AVG(cost) AS m FROM patients", epsilon=1,
                  shares=weights)
        assert bad.status_code == 422, bad.get_json()
    # dummy statements are free (tests/api/test_dummy.py); dummy_seed alone is refused
    assert sql(setup, "SELECT COUNT(*) FROM patients", epsilon=1, dummy=True).status_code == 200
    assert sql(setup, "SELECT COUNT(*) FROM patients", epsilon=1,
               dummy_seed=3).status_code == 422
    for body in ({"sql": "SELECT COUNT(*) FROM patients"},
                 {"sql": "SELECT COUNT(*) FROM patients", "epsilon": 1,
                  "target_ci95_half_width": 4}):
        resp = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/sql/estimate", json=body)
        assert resp.status_code == 422 and "epsilon" in resp.get_json()["details"]
    assert ledger_state(setup)[0] == 1


def test_statement_is_replayed_as_a_whole_and_post_processing_is_free(setup):
    first = sql(setup, EXAMPLE, epsilon=0.5).get_json()
    again = sql(setup, EXAMPLE + " ORDER BY n DESC LIMIT 1", epsilon=0.5).get_json()
    assert again["replayed"] is True and again["epsilon_spent"] == 0
    top = max(first["rows"], key=lambda r: r[1])
    assert again["rows"] == [top]
    # the same aggregates in another SELECT order are the same statement
    swapped = sql(setup, "SELECT AVG(cost) AS mean_cost, sex, COUNT(*) AS n FROM patients "
                         "WHERE age >= 65 GROUP BY sex", epsilon=0.5).get_json()
    assert swapped["replayed"] is True
    assert [[r[1], r[2], r[0]] for r in swapped["rows"]] == first["rows"]
    entries, charged, spent = ledger_state(setup)
    assert entries == 3 and charged == spent == 5 * 10**11


def test_sql_and_json_forms_replay_each_other(setup):
    json_first = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query", json={
        "aggregate": "mean", "column": "cost", "epsilon": 0.2, "group_by": ["sex"],
        "where": [{"column": "age", "op": ">=", "value": 65}]}).get_json()
    as_sql = sql(setup, "SELECT sex, AVG(cost) FROM patients WHERE age >= 65 GROUP BY sex",
                 epsilon=0.2).get_json()
    assert as_sql["replayed"] is True and as_sql["epsilon_spent"] == 0
    assert [r[1] for r in as_sql["rows"]] == [c["value"] for c in json_first["result"]]

    sql_first = sql(setup, "SELECT MEDIAN(cost) FROM patients WHERE smoker", epsilon=0.3).get_json()
    as_json = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query", json={
        "aggregate": "quantile", "column": "cost", "quantile": 0.5, "epsilon": 0.3,
        "where": [{"column": "smoker", "op": "==", "value": True}]}).get_json()
    assert as_json["replayed"] is True
    assert as_json["result"] == sql_first["rows"][0][0]
    assert as_json["accuracy"]["ci95"] == sql_first["ci95"][0][0]
    assert ledger_state(setup)[2] == 5 * 10**11


def test_histogram_rows_are_bucket_numbers(setup):
    body = sql(setup, "SELECT WIDTH_BUCKET(age, 0, 100, 4) AS bucket, COUNT(*) AS n "
                      "FROM patients GROUP BY bucket", epsilon=0.5).get_json()
    assert body["columns"] == ["bucket", "n"]
    assert [r[0] for r in body["rows"]] == [1, 2, 3, 4]
    assert body["aggregates"][0]["aggregate"] == "histogram"


def test_refusals_charge_nothing_and_name_the_construct(setup):
    for text, construct in REFUSED:
        resp = sql(setup, text, epsilon=0.1)
        assert resp.status_code == 422, (text, resp.get_json())
        body = resp.get_json()
        assert body["code"] == "invalid_request"
        assert body["details"]["construct"] == construct, (text, body)
    assert ledger_state(setup) == (0, 0, 0)


def test_over_budget_statement_charges_nothing(setup):
    resp = sql(setup, EXAMPLE, epsilon=2)
    assert resp.status_code == 200
    resp = sql(setup, "SELECT COUNT(*) AS a, SUM(cost) AS b FROM patients", epsilon=1.5)
    assert resp.status_code == 403 and resp.get_json()["code"] == "budget_exhausted"
    assert ledger_state(setup) == (1, 2 * 10**12, 2 * 10**12)


def test_gaussian_statement_splits_delta_and_is_charged_as_estimated(setup):
    text = "SELECT COUNT(*) AS n, SUM(cost) AS s FROM patients"
    estimate = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/sql/estimate", json={
        "sql": text, "epsilon": 0.4, "delta": 1e-6, "mechanism": "gaussian"}).get_json()
    body = sql(setup, text, epsilon=0.4, delta=1e-6, mechanism="gaussian").get_json()
    assert [(a["epsilon"], a["delta"]) for a in body["aggregates"]] == [(0.2, 5e-7), (0.2, 5e-7)]
    # the accountant charges the tighter valid bound (RDP at the budget's delta), as for JSON
    assert body["epsilon_spent"] == estimate["epsilon"] <= 0.4
    assert body["delta_spent"] == estimate["delta"]


def test_estimate_spends_nothing_and_lists_each_share(setup):
    resp = setup["analyst"].post(f"/v1/datasets/{setup['ds']}/sql/estimate",
                                 json={"sql": EXAMPLE, "epsilon": 0.5})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["epsilon"] == 0.5
    assert [a["epsilon"] for a in body["aggregates"]] == [0.25, 0.25]
    assert body["aggregates"][0]["accuracy"]["ci95_half_width"] > 0
    assert body["aggregates"][1]["accuracy"]["ci95_half_width"] is None  # a mean needs private n
    assert ledger_state(setup) == (0, 0, 0)


def test_statement_text_is_stored_encrypted_with_the_entry(setup):
    text = "SELECT COUNT(*) FROM patients WHERE sex = 'F' AND age > 41"
    sql(setup, text, epsilon=0.1)
    st = setup["api"].app.extensions["privacy_api"]
    with st.db.transaction() as session:
        entry = session.scalars(select(LedgerEntry)).one()
        assert entry.sql_token is not None and b"patients" not in entry.sql_token
        cipher = data_cipher(session, st.keyring, setup["ds"])
        assert cipher.decrypt(entry.sql_token).decode() == text
    # a JSON query stores no text
    setup["analyst"].post(f"/v1/datasets/{setup['ds']}/query", json={"aggregate": "count",
                                                                    "epsilon": 0.2})
    with st.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)
                              .where(LedgerEntry.sql_token.is_(None))) == 1


def test_other_analysts_and_roles_cannot_use_the_endpoint(setup):
    _, other = setup["api"].user("eve", "analyst")
    resp = setup["api"].as_(other).post(f"/v1/datasets/{setup['ds']}/sql",
                                        json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 1})
    assert resp.status_code == 404
    resp = setup["admin"].post(f"/v1/datasets/{setup['ds']}/sql",
                               json={"sql": "SELECT COUNT(*) FROM patients", "epsilon": 1})
    assert resp.status_code == 403


@pytest.mark.parametrize("text", [
    "SELECT COUNT(*) FROM patients WHERE " + "(" * 3000 + "age > 1" + ")" * 3000,
    "SELECT COUNT(*) FROM patients WHERE " + " OR ".join(["sex = 'F'"] * 1500),
    "SELECT COUNT(*) FROM patients WHERE " + "NOT " * 3000 + "smoker",
    "SELECT " + ", ".join(["COUNT(*)"] * 40) + " FROM patients",
    "x" * 10_001,
])
def test_hostile_statements_are_refused_not_crashed(setup, text):
    resp = sql(setup, text, epsilon=0.1)
    assert resp.status_code in (400, 422), resp.get_data(as_text=True)[:300]
    assert set(resp.get_json()) == {"code", "message", "details"}
    assert ledger_state(setup) == (0, 0, 0)


def test_dataset_key_rotation_reencrypts_the_statement_text_and_deletion_shreds_it(setup):
    from privacy_api.services import datasets as ds_service

    text = "SELECT COUNT(*) FROM patients WHERE age > 7"
    assert sql(setup, text, epsilon=0.1).status_code == 200
    st = setup["api"].app.extensions["privacy_api"]
    with st.db.transaction() as session:
        before = session.scalars(select(LedgerEntry.sql_token)).one()
        ds_service.start_dataset_key_rotation(session, st.keyring, setup["ds"])
    with st.db.transaction() as session:
        while ds_service.reencrypt_batch(session, st.keyring, setup["ds"], batch_size=1000):
            pass
    with st.db.transaction() as session:
        after = session.scalars(select(LedgerEntry.sql_token)).one()
        assert after != before
        # only the new key is left, and it reads the text
        assert data_cipher(session, st.keyring, setup["ds"]).decrypt(after).decode() == text
    with st.db.transaction() as session:  # the dataset's owner crypto-shreds it
        from privacy_api.storage.models import Dataset, User

        dataset = session.get(Dataset, setup["ds"])
        owner_user = session.get(User, dataset.owner_id)
        ds_service.delete_dataset(session, owner_user, setup["ds"])
    with st.db.transaction() as session:
        assert session.scalars(select(LedgerEntry.sql_token)).one() is None
