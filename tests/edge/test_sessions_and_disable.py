"""Sign-out ends the dashboard session server-side; admins can disable and re-enable users."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from privacy_api.storage.models import AuditEvent, DashboardSession
from tests.dashboard.conftest import Dash
from tests.helpers import Api


def _cookie(dash: Dash) -> str:
    cookie = dash.client.get_cookie("session", domain="localhost")
    assert cookie is not None
    return str(cookie.value)


def _with_cookie(app: Any, value: str) -> Dash:
    thief = Dash(app)
    thief.client.set_cookie("session", value, domain="localhost")
    return thief


def _audit(api: Api, action: str) -> list[AuditEvent]:
    with api.app.extensions["privacy_api"].db.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_copied_cookie_stops_working_after_sign_out(api: Api) -> None:
    _, root = api.user("root", "admin")
    dash = Dash(api.app)
    assert dash.sign_in(root).status_code == 303
    copied = _cookie(dash)
    assert _with_cookie(api.app, copied).get("/admin/users").status_code == 200  # works while live
    assert dash.post("/admin/signout").status_code == 303
    replay = _with_cookie(api.app, copied).get("/admin/users")
    assert replay.status_code == 303 and replay.headers["Location"].endswith("/admin/signin")
    # Nor can the copy act (a POST with its own CSRF token from the sign-in page).
    thief = _with_cookie(api.app, copied)
    assert thief.post("/admin/users", {"name": "mallory", "role": "admin"}).status_code == 303
    assert "mallory" not in [u["name"] for u in api.as_(root).get("/v1/users").get_json()]
    with api.app.extensions["privacy_api"].db.transaction() as s:
        rows = s.scalars(select(DashboardSession)).all()
        assert len(rows) == 1 and rows[0].ended_at is not None
        assert copied not in rows[0].id  # only a digest of the token is stored


def test_signing_out_one_browser_leaves_the_others_signed_in(api: Api) -> None:
    _, root = api.user("root", "admin")
    laptop, phone = Dash(api.app), Dash(api.app)
    laptop.sign_in(root)
    phone.sign_in(root)
    laptop.post("/admin/signout")
    assert laptop.get("/admin").status_code == 303
    assert phone.get("/admin").status_code == 200


def test_disable_over_the_api_stops_keys_and_sessions_at_once(api: Api) -> None:
    root_id, root = api.user("root", "admin")
    other_id, other = api.user("second", "admin")
    ana_id, ana = api.user("ana", "analyst")
    dash = Dash(api.app)
    dash.sign_in(other)
    assert api.as_(ana).get("/v1/me").status_code == 200

    resp = api.as_(root).post(f"/v1/users/{ana_id}/disable")
    assert resp.status_code == 200 and resp.get_json()["disabled"] is True
    assert api.as_(ana).get("/v1/me").status_code == 401
    assert api.as_(root).post(f"/v1/users/{other_id}/disable").status_code == 200
    assert api.as_(other).get("/v1/me").status_code == 401
    assert dash.get("/admin").status_code == 303  # the disabled admin's session ended
    assert "account was disabled" in dash.get("/admin/signin").text

    events = _audit(api, "user.disable")
    assert {e.target for e in events} == {f"user:{ana_id}", f"user:{other_id}"}
    assert all(e.actor_id == root_id for e in events)
    assert [e.details.get("sessions_ended") for e in events if e.target == f"user:{other_id}"] == [1]

    resp = api.as_(root).post(f"/v1/users/{ana_id}/enable")
    assert resp.status_code == 200 and resp.get_json()["disabled"] is False
    assert api.as_(ana).get("/v1/me").status_code == 200
    api.as_(root).post(f"/v1/users/{other_id}/enable")
    assert api.as_(other).get("/v1/me").status_code == 200
    assert dash.get("/admin").status_code == 303  # an ended session is not revived
    assert len(_audit(api, "user.enable")) == 2


def test_who_may_disable_whom(api: Api) -> None:
    root_id, root = api.user("root", "admin")
    ana_id, ana = api.user("ana", "analyst")
    own = api.as_(root).post(f"/v1/users/{root_id}/disable")
    assert own.status_code == 409 and own.get_json()["code"] == "conflict"
    assert api.as_(root).get("/v1/me").status_code == 200
    forbidden = api.as_(ana).post(f"/v1/users/{root_id}/disable")
    assert forbidden.status_code == 403
    assert api.as_(root).post("/v1/users/999999/disable").get_json()["code"] == "not_found"
    assert api.post(f"/v1/users/{ana_id}/disable").status_code == 401
    assert _audit(api, "user.disable") == []


def test_disable_and_enable_from_the_dashboard(api: Api) -> None:
    _, root = api.user("root", "admin")
    bob_id, bob = api.user("bob", "owner")
    ana_id, ana = api.user("ana", "analyst")
    dash = Dash(api.app)
    dash.sign_in(root)
    for user_id, key, page in ((bob_id, bob, f"/admin/users/{bob_id}"),
                               (ana_id, ana, f"/admin/analysts/{ana_id}")):
        assert "Disable this account" in dash.get(page).text
        resp = dash.post(f"/admin/users/{user_id}/disabled", {"disabled": "1"})
        assert resp.status_code == 303
        assert api.as_(key).get("/v1/me").status_code == 401
        shown = dash.get(page).text
        assert "This account is disabled." in shown and "Re-enable this account" in shown
        assert dash.post(f"/admin/users/{user_id}/disabled", {"disabled": "0"}).status_code == 303
        assert api.as_(key).get("/v1/me").status_code == 200
    assert "user.disable" in dash.get("/admin/audit").text
    # Disabling yourself is refused with the error page, and nothing changes.
    me = api.as_(root).get("/v1/me").get_json()["id"]
    refused = dash.post(f"/admin/users/{me}/disabled", {"disabled": "1"})
    assert refused.status_code == 409 and "cannot disable your own account" in refused.text
    assert dash.get("/admin").status_code == 200
    # Without the CSRF token the form does nothing.
    assert dash.post(f"/admin/users/{bob_id}/disabled", {"disabled": "1"}, csrf=False).status_code == 400
    assert api.as_(bob).get("/v1/me").status_code == 200
