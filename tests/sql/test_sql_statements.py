"""The statement table: each accepted SELECT and the JSON plans it must produce; each refused
one and the construct its 422 must name. Pure translation (no app): the HTTP path is in
test_sql_api.py."""

from __future__ import annotations

from typing import Any

import pytest

from privacy_api.services.query_plan import build_plan
from privacy_api.services.sql_plan import SqlRefused, parse_statement
from privacy_api.storage.dataset_schema import DatasetSchema
from tests.helpers import PATIENTS_SCHEMA

SCHEMA = DatasetSchema.from_model(PATIENTS_SCHEMA["columns"], "patient_id", 1)


def plan(aggregate: str, column: str | None = None, where: list[Any] | None = None,
         group_by: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    spec = {"aggregate": aggregate, "column": column, "group_by": group_by or [],
            "where": [{"column": c, "op": o, "value": v} for c, o, v in (where or [])], **extra}
    return build_plan(SCHEMA, spec).canonical()


ACCEPTED: list[tuple[str, list[dict[str, Any]]]] = [
    ("SELECT COUNT(*) FROM patients", [plan("count")]),
    ("select count(*) from PATIENTS", [plan("count")]),
    ("SELECT COUNT(age) FROM patients", [plan("count")]),
    ("SELECT COUNT(*) AS n FROM patients p WHERE p.age >= 65", [plan("count", where=[("age", ">=", 65)])]),
    ("SELECT SUM(cost) FROM patients", [plan("sum", "cost")]),
    ("SELECT AVG(cost) AS m FROM patients WHERE sex = 'F'", [plan("mean", "cost", [("sex", "==", "F")])]),
    ("SELECT VARIANCE(age) FROM patients", [plan("variance", "age")]),
    ("SELECT VAR_POP(age) FROM patients", [plan("variance", "age")]),
    ("SELECT VAR_SAMP(age) FROM patients", [plan("variance", "age")]),
    ("SELECT STDDEV(cost) FROM patients", [plan("std", "cost")]),
    ("SELECT STDDEV_POP(cost) FROM patients", [plan("std", "cost")]),
    ("SELECT STDDEV_SAMP(cost) FROM patients", [plan("std", "cost")]),
    ("SELECT MEDIAN(age) FROM patients", [plan("quantile", "age", quantile=0.5)]),
    ("SELECT PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY cost) FROM patients",
     [plan("quantile", "cost", quantile=0.9)]),
    ("SELECT PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY cost DESC) FROM patients",
     [plan("quantile", "cost", quantile=0.09999999999999998)]),
    ("SELECT APPROX_QUANTILE(age, 0.25) FROM patients", [plan("quantile", "age", quantile=0.25)]),
    ("SELECT sex, COUNT(*) FROM patients GROUP BY sex", [plan("count", group_by=["sex"])]),
    ("SELECT sex, smoker, COUNT(*) FROM patients GROUP BY sex, smoker",
     [plan("count", group_by=["sex", "smoker"])]),
    ("SELECT sex, COUNT(*) FROM patients GROUP BY 1", [plan("count", group_by=["sex"])]),
    ("SELECT smoker, AVG(cost) FROM patients GROUP BY smoker", [plan("mean", "cost", group_by=["smoker"])]),
    ("SELECT sex, MEDIAN(cost) FROM patients GROUP BY sex",
     [plan("quantile", "cost", group_by=["sex"], quantile=0.5)]),
    ("SELECT WIDTH_BUCKET(age, 0, 100, 10) AS b, COUNT(*) FROM patients GROUP BY b",
     [plan("histogram", "age", bins=10)]),
    ("SELECT WIDTH_BUCKET(cost, 0, 10000, 4), COUNT(*) FROM patients WHERE smoker "
     "GROUP BY WIDTH_BUCKET(cost, 0, 10000, 4)",
     [plan("histogram", "cost", [("smoker", "==", True)], bins=4)]),
    ("SELECT COUNT(*) FROM patients WHERE age BETWEEN 20 AND 30",
     [plan("count", where=[("age", "between", [20, 30])])]),
    ("SELECT COUNT(*) FROM patients WHERE sex IN ('F', 'M')",
     [plan("count", where=[("sex", "in", ["F", "M"])])]),
    ("SELECT COUNT(*) FROM patients WHERE sex NOT IN ('F')", [plan("count", where=[("sex", "in", ["M"])])]),
    ("SELECT COUNT(*) FROM patients WHERE sex = 'F' OR sex = 'M'",
     [plan("count", where=[("sex", "in", ["F", "M"])])]),
    ("SELECT COUNT(*) FROM patients WHERE NOT (age < 18)", [plan("count", where=[("age", ">=", 18)])]),
    ("SELECT COUNT(*) FROM patients WHERE NOT (age < 18 OR cost > 500)",
     [plan("count", where=[("age", ">=", 18), ("cost", "<=", 500)])]),
    ("SELECT COUNT(*) FROM patients WHERE 65 <= age", [plan("count", where=[("age", ">=", 65)])]),
    ("SELECT COUNT(*) FROM patients WHERE age <> 3", [plan("count", where=[("age", "!=", 3)])]),
    ("SELECT COUNT(*) FROM patients WHERE smoker IS TRUE", [plan("count", where=[("smoker", "==", True)])]),
    ("SELECT COUNT(*) FROM patients WHERE smoker IS FALSE", [plan("count", where=[("smoker", "==", False)])]),
    ("SELECT COUNT(*) FROM patients WHERE NOT smoker", [plan("count", where=[("smoker", "==", False)])]),
    ("SELECT COUNT(*) FROM patients WHERE (age > 1 AND (cost < 99.5)) AND sex != 'M'",
     [plan("count", where=[("age", ">", 1), ("cost", "<", 99.5), ("sex", "!=", "M")])]),
    ("SELECT COUNT(*) FROM patients WHERE cost > -5", [plan("count", where=[("cost", ">", -5)])]),
    ("SELECT sex, COUNT(*) AS n, AVG(cost) AS mean_cost FROM patients WHERE age >= 65 GROUP BY sex",
     [plan("count", where=[("age", ">=", 65)], group_by=["sex"]),
      plan("mean", "cost", [("age", ">=", 65)], ["sex"])]),
    ("SELECT COUNT(*), SUM(cost), MEDIAN(age) FROM patients",
     [plan("count"), plan("sum", "cost"), plan("quantile", "age", quantile=0.5)]),
    ("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex HAVING n > 10 ORDER BY n DESC LIMIT 1",
     [plan("count", group_by=["sex"])]),
    ("SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) > 10 ORDER BY 2 LIMIT 5 OFFSET 1",
     [plan("count", group_by=["sex"])]),
    ("SELECT COUNT(*) FROM patients;", [plan("count")]),
]

REFUSED: list[tuple[str, str]] = [
    ("SELECT COUNT(*) FROM patients JOIN patients q ON TRUE", "JOIN"),
    ("SELECT COUNT(*) FROM patients, patients", "JOIN"),
    ("SELECT COUNT(*) FROM (SELECT * FROM patients) t", "subquery"),
    ("SELECT COUNT(*) FROM patients WHERE age IN (SELECT age FROM patients)", "subquery"),
    ("SELECT COUNT(*) FROM patients UNION SELECT COUNT(*) FROM patients", "UNION"),
    ("SELECT COUNT(*) OVER () FROM patients", "window function"),
    ("SELECT * FROM patients", "SELECT *"),
    ("SELECT age, COUNT(*) FROM patients", "bare column outside GROUP BY"),
    ("SELECT age FROM patients", "bare column outside GROUP BY"),
    ("SELECT COUNT(DISTINCT age) FROM patients", "DISTINCT aggregate"),
    ("SELECT DISTINCT sex FROM patients", "SELECT DISTINCT"),
    ("DELETE FROM patients", "DELETE"),
    ("DROP TABLE patients", "DROP"),
    ("INSERT INTO patients VALUES (1)", "INSERT"),
    ("UPDATE patients SET age = 1", "UPDATE"),
    ("SELECT COUNT(*) FROM patients; SELECT COUNT(*) FROM patients", "statements"),
    ("SELECT SUM(weight) FROM patients", "unknown column"),
    ("SELECT FOO(age) FROM patients", "unknown function"),
    ("SELECT MAX(age) FROM patients", "unsupported function"),
    ("SELECT age, COUNT(*) FROM patients GROUP BY age", "non-public group key"),
    ("SELECT COUNT(*) FROM other", "unknown table"),
    ("WITH t AS (SELECT 1) SELECT COUNT(*) FROM patients", "WITH (common table expression)"),
    ("SELECT COUNT(*) FROM patients WHERE sex = 'F' OR age > 3", "OR"),
    ("SELECT COUNT(*) FROM patients WHERE age NOT BETWEEN 1 AND 3", "NOT BETWEEN"),
    ("SELECT COUNT(*) FROM patients WHERE sex = 'X'", "plan"),
    ("SELECT SUM(cost) * 2 FROM patients", "expression Mul"),
    ("SELECT COUNT(*) FROM patients WHERE age IS NULL", "IS"),
    ("SELECT COUNT(*) FROM", "syntax"),
    ("SELECT COUNT(*) FROM patients LIMIT -1", "LIMIT"),
    ("SELECT sex, COUNT(*) FROM patients GROUP BY sex ORDER BY age", "ORDER BY term"),
    ("SELECT sex, COUNT(*) FROM patients GROUP BY sex HAVING SUM(cost) > 3", "HAVING term"),
    ("SELECT WIDTH_BUCKET(age, 0, 50, 5), COUNT(*) FROM patients GROUP BY 1", "WIDTH_BUCKET bounds"),
    ("SELECT WIDTH_BUCKET(age, 0, 100, 5), AVG(cost) FROM patients GROUP BY 1", "aggregate in a histogram"),
    ("SELECT sex FROM patients GROUP BY sex", "SELECT list"),
    ("SELECT SUM(patient_id) FROM patients", "plan"),
    ("SELECT COUNT(*) FROM patients WHERE age > 'old'", "plan"),
]


def test_the_table_is_large_enough():
    assert len(ACCEPTED) + len(REFUSED) >= 40
    assert len({s for s, _ in ACCEPTED + REFUSED}) == len(ACCEPTED) + len(REFUSED)


@pytest.mark.parametrize(("sql", "plans"), ACCEPTED, ids=[s for s, _ in ACCEPTED])
def test_accepted_statement_produces_the_json_plans(sql, plans):
    statement = parse_statement(SCHEMA, "patients", sql)
    assert [a.plan.canonical() for a in statement.aggregates] == plans
    # the listed equivalent JSON body builds the same plan through the JSON validator
    for agg in statement.aggregates:
        assert build_plan(SCHEMA, agg.spec).canonical() == agg.plan.canonical()


@pytest.mark.parametrize(("sql", "construct"), REFUSED, ids=[s for s, _ in REFUSED])
def test_refused_statement_names_the_construct_and_where(sql, construct):
    with pytest.raises(SqlRefused) as caught:
        parse_statement(SCHEMA, "patients", sql)
    details = caught.value.details
    assert details["construct"] == construct, (caught.value.message, details)
    assert caught.value.status == 422
    if construct not in ("syntax", "SELECT list"):
        # the position points into the statement, at the offending text
        assert 0 <= details["offset"] < len(sql)
        assert details["line"] == 1 and details["col"] >= 1


def test_position_points_at_the_offending_node():
    sql = "SELECT COUNT(*), FOO(age) FROM patients"
    with pytest.raises(SqlRefused) as caught:
        parse_statement(SCHEMA, "patients", sql)
    details = caught.value.details
    assert sql[details["offset"]:].startswith("FOO")
    assert (details["line"], details["col"]) == (1, details["offset"] + 1)
    multiline = "SELECT COUNT(*)\nFROM patients\nWHERE age > 1 OR sex = 'F'"
    with pytest.raises(SqlRefused) as caught:
        parse_statement(SCHEMA, "patients", multiline)
    assert caught.value.details["construct"] == "OR"
    assert (caught.value.details["line"], caught.value.details["col"]) == (3, 7)


def test_post_processing_is_recorded():
    st = parse_statement(SCHEMA, "patients", "SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex "
                         "HAVING n > 10 ORDER BY n DESC LIMIT 1 OFFSET 0")
    assert st.order_by == ((1, True),)
    assert st.limit == 1 and st.offset == 0
    assert st.having is not None
    assert st.having({"sex": "F", "n": 11}) and not st.having({"sex": "F", "n": 10})
