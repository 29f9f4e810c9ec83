"""The analyst's query log shows the SQL text of queries that came as SQL (decrypted for the
admin's page, escaped in the HTML, ciphertext in the database)."""

from __future__ import annotations

from tests.dashboard.conftest import grant
from tests.helpers import patient_rows


def test_query_log_shows_the_statement_text_escaped(world):
    api, dash = world["api"], world["dash"]
    grant(api, world["admin"], world["ana_id"], world["ds1"], 5)
    up = api.as_(world["owner"]).post(f"/v1/datasets/{world['ds1']}/records",
                                      json=patient_rows(50))
    assert up.status_code == 201
    text = "SELECT sex, COUNT(*) AS n, AVG(cost) AS m FROM patients WHERE sex <> 'M' GROUP BY sex"
    resp = api.as_(world["ana"]).post(f"/v1/datasets/{world['ds1']}/sql",
                                      json={"sql": text, "epsilon": 0.5})
    assert resp.status_code == 200, resp.get_json()
    api.as_(world["ana"]).post(f"/v1/datasets/{world['ds1']}/query",
                               json={"aggregate": "count", "epsilon": 0.5})
    page = dash.get(f"/admin/analysts/{world['ana_id']}").get_data(as_text=True)
    escaped = text.replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#39;")
    assert escaped in page
    assert text not in page  # never unescaped
    assert page.count('class="sql"') == 1  # the JSON query shows no text
    # the plan's columns of a multi-aggregate statement are listed
    assert "cost, sex" in page or "sex, cost" in page
