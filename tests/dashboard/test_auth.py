"""Signing in and out, who may, how a session dies, and CSRF on every form."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from privacy_api.dashboard.security import SESSION_STARTED
from privacy_api.storage.models import AuditEvent, User
from tests.dashboard.conftest import Dash


def test_admin_key_signs_in_with_a_strict_httponly_cookie_and_signs_out(api):
    _, admin = api.user("root", "admin")
    dash = Dash(api.app)
    assert dash.get("/admin").headers["Location"].endswith("/admin/signin")
    resp = dash.sign_in(admin)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin")
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the HTTPS test
    assert admin not in cookie  # only the key id is in the session, never the key
    page = dash.get("/admin")
    assert page.status_code == 200 and "Signed in as <strong>root</strong>" in page.text
    out = dash.post("/admin/signout")
    assert out.status_code == 303 and out.headers["Location"].endswith("/admin/signin")
    assert dash.get("/admin").status_code == 303
    assert "Signed out." in dash.get("/admin/signin").text


def test_non_admin_and_unknown_keys_are_refused_with_a_clear_message(api):
    _, analyst = api.user("ana", "analyst")
    _, owner = api.user("olga", "owner")
    dash = Dash(api.app)
    for key in (analyst, owner):
        resp = dash.sign_in(key)
        assert resp.status_code == 403
        assert "Only admin keys can sign in to the dashboard" in resp.text
        assert dash.get("/admin").status_code == 303  # still signed out
    bad = dash.sign_in("pa_0000000000000000_notakey")
    assert bad.status_code == 401 and "not valid" in bad.text
    assert dash.sign_in("").status_code == 401


def test_revoking_the_key_ends_its_session_at_once(api):
    _, root = api.user("root", "admin")
    _, other_admin = api.user("second", "admin")
    dash = Dash(api.app)
    dash.sign_in(root)
    assert dash.get("/admin/users").status_code == 200
    key_id = root.split("_")[1]
    assert api.as_(other_admin).delete(f"/v1/keys/{key_id}").status_code == 204
    resp = dash.get("/admin/users")
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/signin")
    assert "its API key was revoked" in dash.get("/admin/signin").text
    # A POST with a valid token does nothing either.
    assert dash.post("/admin/users", {"name": "mallory", "role": "admin"}).status_code == 303
    with api.app.extensions["privacy_api"].db.transaction() as s:
        assert s.scalar(select(User).where(User.name == "mallory")) is None
    assert dash.sign_in(root).status_code == 401


def test_a_demoted_admin_loses_the_session(api):
    uid, root = api.user("root", "admin")
    dash = Dash(api.app)
    dash.sign_in(root)
    with api.app.extensions["privacy_api"].db.transaction() as s:
        s.get(User, uid).role = "analyst"
    assert dash.get("/admin").status_code == 303
    assert "no longer an admin" in dash.get("/admin/signin").text


def test_sessions_expire_after_the_maximum_age(api):
    _, root = api.user("root", "admin")
    dash = Dash(api.app)
    dash.sign_in(root)
    with dash.client.session_transaction() as sess:
        sess[SESSION_STARTED] = int(time.time()) - 9 * 3600
    assert dash.get("/admin").status_code == 303
    assert "expired" in dash.get("/admin/signin").text


def test_form_posts_without_a_csrf_token_are_refused(api):
    _, root = api.user("root", "admin")
    dash = Dash(api.app)
    # Sign-in itself is protected (no login CSRF).
    dash.get("/admin/signin")
    resp = dash.post("/admin/signin", {"api_key": root}, csrf=False)
    assert resp.status_code == 400 and resp.mimetype == "text/html"
    assert "CSRF" in resp.text
    dash.sign_in(root)
    users_before = _count_users(api)
    for path, data in [("/admin/users", {"name": "eve", "role": "admin"}),
                       ("/admin/signout", {})]:
        resp = dash.post(path, data, csrf=False)
        assert resp.status_code == 400 and "Form refused" in resp.text
        bad = dash.client.post(path, data={**data, "csrf_token": "forged"})
        assert bad.status_code == 400
    assert _count_users(api) == users_before
    assert dash.get("/admin").status_code == 200  # still signed in: sign-out was refused too


def test_the_json_api_needs_no_csrf_token_and_keeps_json_errors(api):
    _, root = api.user("root", "admin")
    resp = api.as_(root).post("/v1/users", json={"name": "ana", "role": "analyst"})
    assert resp.status_code == 201
    missing = api.get("/v1/does-not-exist")
    assert missing.status_code == 404 and missing.get_json()["code"] == "not_found"
    assert api.as_(root).post("/v1/users", json={"name": "ana", "role": "analyst"}) \
        .get_json()["code"] == "conflict"
    assert "Content-Security-Policy" not in missing.headers  # dashboard headers stay in /admin
    spec = api.get("/openapi.json").get_json()
    assert not [p for p in spec["paths"] if p.startswith("/admin")]


def test_over_https_the_cookie_is_secure_and_forms_work_without_a_referer(api):
    _, root = api.user("root", "admin")
    dash = Dash(api.app, base_url="https://admin.example")
    resp = dash.sign_in(root)  # Referrer-Policy no-referrer: browsers send no Referer
    assert resp.status_code == 303
    assert "Secure" in resp.headers["Set-Cookie"]
    created = dash.post("/admin/users", {"name": "ana", "role": "analyst"})
    assert created.status_code == 201


def test_sign_in_is_audited_with_the_admin_as_actor(api):
    uid, root = api.user("root", "admin")
    Dash(api.app).sign_in(root)
    with api.app.extensions["privacy_api"].db.transaction() as s:
        actor = s.scalar(select(AuditEvent.actor_id).where(AuditEvent.action == "dashboard.sign_in"))
    assert actor == uid


def _count_users(api) -> int:
    with api.app.extensions["privacy_api"].db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(User)) or 0)
