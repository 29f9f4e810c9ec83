"""The SDK's DataFrames (the [pandas] extra) against a served app: SQL and JSON answers."""

from __future__ import annotations

import pytest
from sdk_support import PATIENTS_SCHEMA, patient_rows

from privacy_client import Client, InvalidRequest

pd = pytest.importorskip("pandas", reason="the [pandas] extra is not installed")


@pytest.fixture
def env(served):
    _, owner = served.user("owner")
    aid, analyst = served.user("analyst")
    with Client(served.url, owner) as owner_client:
        ds = owner_client.create_dataset("patients", PATIENTS_SCHEMA["columns"],
                                         privacy_unit=PATIENTS_SCHEMA["privacy_unit"])["id"]
        owner_client.upload_records(ds, patient_rows(300), progress=False)
    served.grant(aid, ds, 5.0)
    with Client(served.url, analyst) as client:
        yield client, ds


def test_sql_returns_the_dataframe_described(env):
    c, ds = env
    df = c.sql(ds, "SELECT sex, COUNT(*) AS n, AVG(cost) AS mean_cost FROM patients "
                   "WHERE age >= 65 GROUP BY sex", epsilon=0.5)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["sex", "n", "mean_cost", "n_ci95_low", "n_ci95_high",
                                "mean_cost_ci95_low", "mean_cost_ci95_high"]
    assert list(df["sex"]) == ["F", "M"]
    assert (df["n_ci95_low"] <= df["n"]).all() and (df["n"] <= df["n_ci95_high"]).all()
    assert df.attrs["epsilon_spent"] == 0.5 and df.attrs["replayed"] is False
    assert isinstance(df.attrs["query_id"], str)
    assert [a["epsilon"] for a in df.attrs["aggregates"]] == [0.25, 0.25]
    again = c.sql(ds, "SELECT sex, COUNT(*) AS n, AVG(cost) AS mean_cost FROM patients "
                      "WHERE age >= 65 GROUP BY sex", epsilon=0.5)
    assert again.attrs["replayed"] is True and again.attrs["epsilon_spent"] == 0
    pd.testing.assert_frame_equal(again, df)


def test_sql_refusal_is_a_typed_error_with_the_construct(env):
    c, ds = env
    with pytest.raises(InvalidRequest) as exc:
        c.sql(ds, "SELECT COUNT(*) FROM patients JOIN x ON TRUE", epsilon=0.1)
    assert exc.value.details["construct"] == "JOIN"
    assert c.budgets()[0]["epsilon_spent"] == 0


def test_json_query_as_frame(env):
    c, ds = env
    one = c.query(ds, aggregate="count", epsilon=0.2, as_frame=True)
    assert list(one.columns) == ["count", "count_ci95_low", "count_ci95_high"] and len(one) == 1
    grouped = c.query(ds, aggregate="mean", column="cost", group_by=["sex", "smoker"],
                      epsilon=0.2, as_frame=True)
    assert list(grouped.columns) == ["sex", "smoker", "mean", "mean_ci95_low", "mean_ci95_high"]
    assert len(grouped) == 4 and grouped.attrs["epsilon_spent"] == 0.2
    hist = c.query(ds, aggregate="histogram", column="age", bins=4, epsilon=0.2, as_frame=True)
    assert list(hist.columns)[:3] == ["age_low", "age_high", "count"]
    assert list(hist["age_low"]) == [0.0, 25.0, 50.0, 75.0]
    # the JSON answer is still the default
    assert isinstance(c.query(ds, aggregate="count", epsilon=0.2)["result"], int)
