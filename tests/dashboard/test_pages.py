"""What the pages show: budgets by exhaustion, dataset totals, federations, spend, query log."""

from __future__ import annotations

import datetime as dt
import re

from privacy_api.domain.units import eps_units
from privacy_api.storage.models import Enrollment, Federation, LedgerEntry, Round, RoundUpdate
from tests.dashboard.conftest import Dash, add_ledger, grant, now

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _check_headers(resp, *, no_store: bool = True) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    for name, value in HEADERS.items():
        assert resp.headers[name] == value, name
    if no_store:
        assert resp.headers["Cache-Control"] == "no-store"


def test_every_dashboard_response_carries_the_security_headers(world):
    dash, ana = world["dash"], world["ana_id"]
    grant(world["api"], world["admin"], ana, world["ds1"], 2)
    pages = ["/admin", "/admin/", "/admin/users", f"/admin/analysts/{ana}",
             f"/admin/users/{world['admin_id']}", "/admin/audit", "/admin/audit?page=9",
             f"/admin/users/{ana}", "/admin/no-such-page", "/admin/analysts/999"]
    for path in pages:
        resp = dash.get(path)
        assert resp.status_code in (200, 302, 404), path
        _check_headers(resp)
        # No inline script or style anywhere, or the CSP would break the page.
        body = resp.get_data(as_text=True)
        assert "<style" not in body and "style=" not in body and not re.search(r"<script>", body)
    for post in [dash.post("/admin/users", {"name": "x", "role": "nobody"}),
                 dash.post("/admin/users", {"name": "y"}, csrf=False),
                 dash.post(f"/admin/analysts/{ana}/budgets", {"dataset_id": world["ds1"],
                                                              "epsilon": "3"})]:
        _check_headers(post)
    _check_headers(dash.get("/admin/static/dashboard.css"), no_store=False)
    signed_out = Dash(world["api"].app)
    for path in ["/admin", "/admin/signin", "/admin/audit"]:
        _check_headers(signed_out.get(path))


def test_overview_sorts_budgets_by_closeness_to_exhaustion_and_totals_datasets(world):
    api, admin, ana, bob, ds1, ds2 = (world[k] for k in ("api", "admin", "ana_id", "bob_id",
                                                          "ds1", "ds2"))
    grant(api, admin, ana, ds1, 10)            # 10% spent
    grant(api, admin, ana, ds2, 4, 1e-5)       # ε 25%, δ 80%: closest
    grant(api, admin, bob, ds1, 2)             # 50%
    t = now() - dt.timedelta(hours=1)
    add_ledger(api.app, ana, ds1, "1", at=t)
    add_ledger(api.app, ana, ds2, "1", delta="8e-6", at=t)
    add_ledger(api.app, bob, ds1, "1", at=t)
    page = world["dash"].get("/admin").text
    budget_rows = re.findall(r'<tr data-user="(\d+)" data-dataset="(\d+)">', page)
    assert budget_rows == [(str(ana), str(ds2)), (str(bob), str(ds1)), (str(ana), str(ds1))]
    fractions = re.findall(r'data-fraction="([0-9.]+)"', page)
    assert fractions[:2] == ["0.250000", "0.800000"]
    # Totals across analysts: ds1 has 2 of 12 ε spent; ds2 also has a dataset-wide cap of 5.
    ds1_row = page.split(f'<tr data-dataset="{ds1}">')[1].split("</tr>")[0]
    ds2_row = page.split(f'<tr data-dataset="{ds2}">')[1].split("</tr>")[0]
    assert "2 / 12" in ds1_row and ds1_row.count("no cap") == 2
    assert "1 / 4" in ds2_row and "1 / 5" in ds2_row and 'data-fraction="0.200000"' in ds2_row


def test_overview_lists_federations_with_rounds_contributors_and_budget(world):
    api = world["api"]
    c1, _ = api.user("clinic-1", "client")
    c2, _ = api.user("clinic-2", "client")
    st = api.app.extensions["privacy_api"]
    with st.db.transaction() as s:
        fed = Federation(name="hospitals", owner_id=world["admin_id"], preset="n8192",
                         public_context=b"ctx", vector_length=10, min_clients=2,
                         dp_clip_norm=1.0, dp_noise_multiplier=1.1, epsilon_cap=eps_units(3),
                         epsilon_spent=eps_units("0.75"))
        s.add(fed)
        s.flush()
        s.add_all([Enrollment(federation_id=fed.id, user_id=c1),
                   Enrollment(federation_id=fed.id, user_id=c2)])
        done = Round(federation_id=fed.id, status="aggregated", min_clients=2, received=2,
                     epsilon_charged=eps_units("0.75"))
        failed = Round(federation_id=fed.id, status="failed", min_clients=2, received=1,
                       failure_reason="below min_clients")
        s.add_all([done, failed])
        s.flush()
        s.add_all([RoundUpdate(round_id=done.id, client_id=c1, receipt="a" * 64, size_bytes=9),
                   RoundUpdate(round_id=done.id, client_id=c2, receipt="b" * 64, size_bytes=9),
                   RoundUpdate(round_id=failed.id, client_id=c1, receipt="c" * 64, size_bytes=9)])
        # A DP round's charge has a federation, not a dataset: the analyst views skip it.
        s.add(LedgerEntry(id="fed-charge", user_id=world["ana_id"], dataset_id=None,
                          federation_id=fed.id, round_id=done.id, dataset_version=0,
                          fingerprint="f" * 64, aggregate="fl_round", plan={},
                          mechanism="gaussian", epsilon_requested=eps_units("0.75"),
                          delta_requested=0, epsilon_charged=eps_units("0.75"), delta_charged=0))
    analyst = world["dash"].get(f"/admin/analysts/{world['ana_id']}")
    assert analyst.status_code == 200 and "No charged queries yet." in analyst.text
    assert "0 rows" in analyst.text and "fl_round" not in analyst.text
    page = world["dash"].get("/admin").text
    fed_html = page.split('class="card federation"')[1]
    assert "hospitals" in fed_html and "2 (min 2 per round)" in fed_html
    assert "clip 1.0, noise multiplier 1.1" in fed_html
    assert "0.75 / 3" in fed_html and 'data-fraction="0.250000"' in fed_html
    assert "clinic-1, clinic-2" in fed_html
    assert "aggregated" in fed_html and "below min_clients" in fed_html


def test_analyst_page_draws_cumulative_spend_and_projects_exhaustion(world):
    api, admin, ana, ds1, ds2 = (world[k] for k in ("api", "admin", "ana_id", "ds1", "ds2"))
    grant(api, admin, ana, ds1, 10)
    grant(api, admin, ana, ds2, 10)
    start = now() - dt.timedelta(days=10)
    for day in range(10):  # 0.5 ε a day on ds1 -> 5 left -> about 10 more days
        add_ledger(api.app, ana, ds1, "0.5", at=start + dt.timedelta(days=day))
    add_ledger(api.app, ana, ds1, "0.5", at=start, replay=True)  # replays are free, not drawn
    page = world["dash"].get(f"/admin/analysts/{ana}").text
    assert 'data-charges="10"' in page and "<polyline" in page
    assert "5 ε in 10 charged queries" in page
    row = page.split(f'<tr data-dataset="{ds1}">')[1].split("</tr>")[0]
    projected = re.search(r"(\d{4}-\d{2}-\d{2}) \d\d:\d\d UTC \(at ~([0-9.]+) ε/day\)", row)
    assert projected, row
    eta = dt.datetime.strptime(projected.group(1), "%Y-%m-%d").replace(tzinfo=dt.UTC)
    assert abs((eta - (now() + dt.timedelta(days=10))).days) <= 2
    assert float(projected.group(2)) == 0.5
    other = page.split(f'<tr data-dataset="{ds2}">')[1].split("</tr>")[0]
    assert "no recent spend" in other


def test_analyst_without_queries_has_no_chart(world):
    grant(world["api"], world["admin"], world["ana_id"], world["ds1"], 1)
    page = world["dash"].get(f"/admin/analysts/{world['ana_id']}").text
    assert "No charged queries yet." in page and "<polyline" not in page
    assert "no recent spend" in page


def test_query_log_pages_and_filters(world):
    api, admin, ana, ds1, ds2 = (world[k] for k in ("api", "admin", "ana_id", "ds1", "ds2"))
    grant(api, admin, ana, ds1, 100)
    grant(api, admin, ana, ds2, 100)
    base = now() - dt.timedelta(days=1)
    for i in range(30):
        add_ledger(api.app, ana, ds1, "0.1", at=base + dt.timedelta(minutes=i), replay=i % 3 == 0)
    for i in range(12):
        add_ledger(api.app, ana, ds2, "0.2", aggregate="mean", at=base + dt.timedelta(hours=2, minutes=i),
                   plan={"aggregate": "mean", "column": "cost", "where": [["age", ">=", 18]],
                         "group_by": ["sex"]})
    dash = world["dash"]
    url = f"/admin/analysts/{ana}"

    def rows(query: str) -> list[str]:
        html = dash.get(url + query).text
        return re.findall(r"<tr>\s*<td>\d{4}-", html.split('class="log"')[1].split("</table>")[0])

    first = dash.get(url).text
    assert "Page 1 of 2 · 42 rows" in first
    assert len(rows("")) == 25 and len(rows("?page=2")) == 17
    assert len(rows("?page=99")) == 17  # clamped to the last page
    assert "cost, age, sex" in first  # columns from the plan: aggregated, filter, group key
    assert len(rows(f"?dataset={ds2}")) == 12
    assert len(rows("?aggregate=count")) == 25 and "30 rows" in dash.get(url + "?aggregate=count").text
    assert "10 rows" in dash.get(url + "?replayed=yes").text
    assert "32 rows" in dash.get(url + "?replayed=no").text
    narrowed = dash.get(url + f"?dataset={ds1}&replayed=no&page=1").text
    assert "20 rows" in narrowed
    # Paging links keep the filters.
    paged = dash.get(url + "?aggregate=count&page=1").text
    next_link = re.search(r'<a rel="next" href="([^"]+)"', paged)
    assert next_link, paged
    assert "aggregate=count" in next_link.group(1) and "page=2" in next_link.group(1)


def test_dashboard_errors_are_html_pages(world):
    dash = world["dash"]
    missing = dash.get("/admin/analysts/424242")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "no such user" in missing.text
    unknown = dash.get("/admin/nothing/here")
    assert unknown.status_code == 404 and "no such dashboard page" in unknown.text
    revoke = dash.post("/admin/keys/doesnotexist/revoke")
    assert revoke.status_code == 404 and revoke.mimetype == "text/html"


def test_renewing_budgets_show_period_and_lifetime_side_by_side(world):
    api, dash, ana, ds1 = world["api"], world["dash"], world["ana_id"], world["ds1"]
    resp = dash.post(f"/admin/analysts/{ana}/budgets", {
        "dataset_id": ds1, "epsilon": "2", "renewal_period": "weekly",
        "lifetime_epsilon_cap": "8"})
    assert resp.status_code == 303
    [b] = api.as_(world["admin"]).get(f"/v1/budgets?user_id={ana}").get_json()
    assert b["renewal_period"] == "weekly" and b["lifetime_epsilon_cap"] == 8.0
    page = dash.get("/admin").text
    row = page.split(f'<tr data-user="{ana}" data-dataset="{ds1}">')[1].split("</tr>")[0]
    assert "weekly, renews" in row
    assert '<td class="lifetime">' in row and "0 / 8" in row
    analyst_page = dash.get(f"/admin/analysts/{ana}").text
    assert "ε lifetime" in analyst_page and "weekly, renews" in analyst_page
    # the row's quick "Set" form leaves renewal and the cap alone
    dash.post(f"/admin/analysts/{ana}/budgets", {"dataset_id": ds1, "epsilon": "3"})
    [b] = api.as_(world["admin"]).get(f"/v1/budgets?user_id={ana}").get_json()
    assert b["epsilon_total"] == 3.0 and b["renewal_period"] == "weekly"
    bad = dash.post(f"/admin/analysts/{ana}/budgets", {
        "dataset_id": ds1, "epsilon": "2", "renewal_period": "hourly"})
    assert bad.status_code == 422 and "renewal period" in bad.text
