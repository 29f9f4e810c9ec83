"""Admin actions: create users (key shown once), budgets, freezing, revoking, the audit log."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from privacy_api.storage.models import AuditEvent, Budget
from tests.dashboard.conftest import add_ledger, grant, now


def _audit(api) -> list[tuple[int | None, str, str]]:
    with api.app.extensions["privacy_api"].db.transaction() as s:
        return [tuple(r) for r in s.execute(
            select(AuditEvent.actor_id, AuditEvent.action, AuditEvent.target).order_by(AuditEvent.id))]


def test_creating_a_user_shows_the_key_once(world):
    api, dash = world["api"], world["dash"]
    resp = dash.post("/admin/users", {"name": "carol", "role": "analyst"})
    assert resp.status_code == 201 and resp.headers["Cache-Control"] == "no-store"
    key = re.search(r'<code id="new-key">(pa_[^<]+)</code>', resp.text).group(1)
    assert api.as_(key).get("/v1/me").get_json()["name"] == "carol"
    # Never again: not on the users page, the analyst page, the audit log or in the cookie.
    uid = api.as_(key).get("/v1/me").get_json()["id"]
    for path in ["/admin/users", f"/admin/analysts/{uid}", "/admin/audit", "/admin"]:
        page = dash.get(path)
        assert key not in page.text and key.split("_", 2)[2] not in page.text
        assert key not in page.headers.get("Set-Cookie", "")
    assert (world["admin_id"], "user.create", f"user:{uid}") in _audit(api)
    # A second key for the same user is shown once as well; the first keeps working.
    again = dash.post(f"/admin/users/{uid}/keys")
    assert again.status_code == 201
    second = re.search(r'<code id="new-key">(pa_[^<]+)</code>', again.text).group(1)
    assert second != key and api.as_(second).get("/v1/me").status_code == 200
    assert (world["admin_id"], "key.create", f"user:{uid}") in _audit(api)


def test_create_user_errors_are_shown_on_the_form(world):
    dash = world["dash"]
    dup = dash.post("/admin/users", {"name": "ana", "role": "analyst"})
    assert dup.status_code == 409 and "already exists" in dup.text
    assert 'value="ana"' in dup.text  # the form keeps what was typed
    bad = dash.post("/admin/users", {"name": "zed", "role": "emperor"})
    assert bad.status_code == 422 and "role must be one of" in bad.text
    blank = dash.post("/admin/users", {"name": "  ", "role": "owner"})
    assert blank.status_code == 422 and "Name is required" in blank.text


def test_grant_raise_freeze_and_unfreeze_a_budget(world):
    api, dash, ana, ds1 = world["api"], world["dash"], world["ana_id"], world["ds1"]
    url = f"/admin/analysts/{ana}/budgets"
    resp = dash.post(url, {"dataset_id": ds1, "epsilon": "1.5", "delta": "1e-6"})
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/admin/analysts/{ana}")
    page = dash.get(f"/admin/analysts/{ana}").text
    assert "Budget on dataset" in page and "0 / 1.5" in page and "0 / 0.000001" in page
    assert dash.post(url, {"dataset_id": ds1, "epsilon": "3", "delta": "1e-6"}).status_code == 303
    budgets = api.as_(world["ana"]).get("/v1/budgets").get_json()
    assert budgets[0]["epsilon_total"] == 3 and budgets[0]["delta_total"] == 1e-6
    freeze = dash.post(f"/admin/analysts/{ana}/budgets/{ds1}/freeze", {"frozen": "1"})
    assert freeze.status_code == 303
    assert api.as_(world["ana"]).get("/v1/budgets").get_json()[0]["frozen"] is True
    assert "Unfreeze" in dash.get(f"/admin/analysts/{ana}").text
    assert dash.post(f"/admin/analysts/{ana}/budgets/{ds1}/freeze", {"frozen": "0"}).status_code == 303
    after = api.as_(world["ana"]).get("/v1/budgets").get_json()[0]
    assert after["frozen"] is False and after["epsilon_total"] == 3  # totals untouched
    actions = [(actor, action) for actor, action, target in _audit(api)
               if target == f"budget:{ana}/{ds1}"]
    me = world["admin_id"]
    assert actions == [(me, "budget.grant"), (me, "budget.raise"), (me, "budget.freeze"),
                       (me, "budget.unfreeze")]


def test_setting_a_budget_below_spent_shows_the_conflict(world):
    api, dash, ana, ds1 = world["api"], world["dash"], world["ana_id"], world["ds1"]
    grant(api, world["admin"], ana, ds1, 2)
    add_ledger(api.app, ana, ds1, "1.25", at=now() - dt.timedelta(hours=1))
    resp = dash.post(f"/admin/analysts/{ana}/budgets", {"dataset_id": ds1, "epsilon": "1"})
    assert resp.status_code == 409 and resp.mimetype == "text/html"
    message = re.search(r'<p class="flash error" role="alert" id="budget-error">([^<]+)</p>',
                        resp.text)
    assert message and "cannot be set below what is already spent" in message.group(1)
    assert "spent: ε 1.25" in message.group(1)
    assert "<h2>Spend over time</h2>" in resp.text  # the whole page, not a bare error
    with api.app.extensions["privacy_api"].db.transaction() as s:
        assert s.scalar(select(Budget.epsilon_total)) == 2 * 10**12
    assert not [a for a in _audit(api) if a[1] == "budget.lower"]


def test_bad_budget_input_is_explained(world):
    dash, ana, ds1 = world["dash"], world["ana_id"], world["ds1"]
    url = f"/admin/analysts/{ana}/budgets"
    for data, status, text in [
        ({"dataset_id": ds1, "epsilon": "lots"}, 422, "ε must be a number"),
        ({"dataset_id": ds1, "epsilon": "-1"}, 422, "finite number ≥ 0"),
        ({"dataset_id": ds1, "epsilon": "NaN"}, 422, "finite number ≥ 0"),
        ({"dataset_id": ds1, "epsilon": "1", "delta": "1"}, 422, "0 &lt;= delta &lt; 1"),
        ({"dataset_id": 999, "epsilon": "1"}, 404, "no such dataset"),
        ({"epsilon": "1"}, 422, "Dataset is required"),
    ]:
        resp = dash.post(url, data)
        assert resp.status_code == status and text in resp.text, (data, resp.status_code)
    owner_page = dash.post(f"/admin/analysts/{world['admin_id']}/budgets",
                           {"dataset_id": ds1, "epsilon": "1"})
    assert owner_page.status_code == 302  # not an analyst: sent to the user page


def test_revoking_a_key_from_the_dashboard(world):
    api, dash = world["api"], world["dash"]
    key_id = world["bob"].split("_")[1]
    assert f"<code>{key_id}</code>" in dash.get(f"/admin/analysts/{world['bob_id']}").text
    resp = dash.post(f"/admin/keys/{key_id}/revoke")
    assert resp.status_code == 303
    assert api.as_(world["bob"]).get("/v1/me").status_code == 401
    page = dash.get(resp.headers["Location"]).text
    assert f"Key {key_id} revoked" in page
    assert (world["admin_id"], "key.revoke", f"user:{world['bob_id']}") in _audit(api)


def test_audit_log_lists_actions_with_their_actor(world):
    dash = world["dash"]
    dash.post("/admin/users", {"name": "dora", "role": "owner"})
    dash.post(f"/admin/analysts/{world['ana_id']}/budgets", {"dataset_id": world["ds1"],
                                                             "epsilon": "1"})
    page = dash.get("/admin/audit").text
    rows = re.findall(r"<tr>\s*<td>[^<]+</td>\s*<td>([^<]+)</td>\s*<td><code>([^<]+)</code>", page)
    assert rows[0] == ("root", "budget.grant")
    assert rows[1] == ("root", "user.create")
    assert ("root", "dashboard.sign_in") in rows
    assert ("system (CLI)", "user.create") in rows  # users made by the fixture, without actor
    assert "name=dora" in page
    for i in range(60):
        dash.post("/admin/users", {"name": f"u{i}", "role": "client"})
    assert "Page 1 of 2" in dash.get("/admin/audit").text
    second = dash.get("/admin/audit?page=2").text
    assert "dashboard.sign_in" in second  # the oldest events are on the last page
